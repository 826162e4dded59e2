"""Export a trained encoder to ONNX with everything scoring needs.

``seqchurn export ckpt_dir=checkpoints/online_retail_gru`` writes ``model.onnx`` and
``model.json`` (feature spec, vocabularies, normalisation, churn definition, threshold,
temperature, model version, data fingerprint, metrics, drift reference, pseudonymisation
key id, digest) into ``ckpt_dir``. The same JSON, without the drift reference, is
embedded in the ONNX metadata under the key ``seqchurn``. The card's ``sha256``
(:func:`seqchurn.model_files.model_digest`) covers the ONNX bytes and every other card
field, so ``seqchurn score`` rejects a model whose file or card was edited after export.

Export fails unless onnxruntime matches PyTorch within ``parity_tolerance`` on real
validation sequences at two batch sizes and two padded lengths, with mixed padding sides.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import onnx
import onnxruntime as ort
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from seqchurn.conf_utils import CONFIG_DIR, register_resolvers
from seqchurn.data.io import LogSpec
from seqchurn.data.schema import InputError
from seqchurn.data.sequences import FeatureSpec, SequenceArrays
from seqchurn.drift import model_reference
from seqchurn.errors import exits_on_error
from seqchurn.model_files import CARD_FILE, MODEL_FILE, OUTPUT_NAME, model_digest
from seqchurn.models.hazard import expected_days, survival_at
from seqchurn.models.churn_module import INPUT_NAMES
from seqchurn.utils.atomic import atomic_path, atomic_write_json
from seqchurn.utils.run_summary import track_run

log = logging.getLogger(__name__)
register_resolvers()

__all__ = ["CARD_FILE", "MODEL_FILE", "OUTPUT_NAME", "ScoringModel", "export", "model_digest", "verify_card"]
SUMMARY_FILE = "export_run_summary.json"
DRIFT_BINS = 10


HORIZON_OUTPUT, EXPECTED_DAYS_OUTPUT = "horizon_probability", "expected_days_to_activity"


class ScoringModel(nn.Module):
    """The encoder plus temperature scaling: inputs -> calibrated P(churn), shape ``(B,)``.

    With a hazard head (``hazard`` = the training summary's ``hazard`` entry) it also returns
    ``(B, H)`` P(no activity within each horizon) and ``(B,)`` expected days to the next
    activity within the hazard window.
    """

    def __init__(self, net: nn.Module, temperature: float = 1.0, hazard: dict | None = None) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("inv_temperature", torch.tensor(1.0 / temperature, dtype=torch.float32))
        self.hazard = hazard
        if hazard:
            self.register_buffer("horizons", torch.tensor(hazard["horizons_days"], dtype=torch.float32))

    @property
    def output_names(self) -> list[str]:
        return [OUTPUT_NAME, HORIZON_OUTPUT, EXPECTED_DAYS_OUTPUT] if self.hazard else [OUTPUT_NAME]

    def forward(
        self, event_type: torch.Tensor, item: torch.Tensor, numeric: torch.Tensor, mask: torch.Tensor, static: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(event_type, item, numeric, mask, static)  # (B, 1 + K)
        prob = torch.sigmoid(out[:, 0] * self.inv_temperature)  # (B,)
        if not self.hazard:
            return prob
        hazard_logits = out[:, 1:]  # (B, K)
        bin_days = float(self.hazard["bin_days"])
        return prob, survival_at(hazard_logits, self.horizons, bin_days), expected_days(hazard_logits, bin_days)


def _outputs(model: nn.Module, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Every output of ``model`` as numpy arrays (a single-output model gives a list of one)."""
    with torch.no_grad():
        out = model(*_to_torch(inputs))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def load_net(summary: dict, ckpt_path: str | Path) -> nn.Module:
    """Rebuild the plain encoder from a Lightning checkpoint without Lightning."""
    cfg = dict(summary["net_config"])
    cfg["_target_"] = cfg.pop("target")
    net = hydra.utils.instantiate(cfg)
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
    net_state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    net_state = {k.removeprefix("_orig_mod."): v for k, v in net_state.items()}  # torch.compile prefix
    net.load_state_dict(net_state)
    return net.eval()


def _to_torch(inputs: dict[str, np.ndarray]) -> list[torch.Tensor]:
    # A copy: cached arrays are read-only memory maps, which torch warns about.
    return [torch.as_tensor(np.array(inputs[k], copy=True)) for k in INPUT_NAMES]


def pad_to(arrays: SequenceArrays, length: int, *, left: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Re-pad right-padded ``arrays`` to ``length``, moving rows flagged in ``left`` to left padding."""
    n, T = arrays.mask.shape
    if length < T:
        raise ValueError(f"Expected a padded length >= {T}, but got {length}")
    out = {}
    lengths = arrays.mask.sum(1)
    shift = np.where(left if left is not None else np.zeros(n, bool), length - lengths, 0)  # (N,)
    idx = (np.arange(length)[None, :] - shift[:, None])  # (N, L) source position per target
    valid = (idx >= 0) & (idx < lengths[:, None])
    src = np.clip(idx, 0, T - 1)
    rows = np.arange(n)[:, None]
    for name in ("event_type", "item", "mask"):
        a = np.asarray(getattr(arrays, name))
        out[name] = np.where(valid, a[rows, src], np.zeros((), a.dtype))
    num = np.asarray(arrays.numeric)
    out["numeric"] = np.where(valid[..., None], num[rows, src], 0.0).astype(np.float32)
    out["static"] = np.asarray(arrays.static)
    return out


def check_parity(model: nn.Module, onnx_path: Path, arrays: SequenceArrays, tolerance: float, seed: int = 0) -> float:
    """Max |ORT - torch| over two batch sizes x two padded lengths; raise if over ``tolerance``."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    n, T = arrays.mask.shape
    worst = 0.0
    for batch in (min(3, n), min(64, n)):
        rows = rng.choice(n, size=batch, replace=False)
        sub = arrays.take(rows)
        for length in (T, T + 13):
            left = rng.random(batch) < 0.5  # mix padding sides inside one batch
            inputs = pad_to(sub, length, left=left)
            expected = _outputs(model, inputs)
            got = sess.run(model.output_names, {k: inputs[k] for k in INPUT_NAMES})
            scales = [1.0] * len(expected)
            if len(expected) == 3:
                # Expected days are in days, not probabilities: compare them relative to their size.
                scales[2] = 1.0 + float(np.max(np.abs(expected[2])))
            diff = max(float(np.max(np.abs(g - e))) / scale for g, e, scale in zip(got, expected, scales))
            log.info("parity batch %d length %d: max |onnxruntime - torch| = %.2e", batch, length, diff)
            worst = max(worst, diff)
    if not worst <= tolerance:
        raise RuntimeError(f"ONNX parity check failed: max difference {worst:.3g} > tolerance {tolerance:g}; the model was not written")
    return worst


def export_onnx(model: nn.Module, example: dict[str, np.ndarray], path: Path, opset: int = 18) -> None:
    """Export with dynamic batch and sequence axes (example sizes are >= 2 on both)."""
    from torch.export import Dim

    batch, seq = Dim("batch", min=1), Dim("seq", min=1)
    dynamic = {"event_type": {0: batch, 1: seq}, "item": {0: batch, 1: seq}, "numeric": {0: batch, 1: seq}, "mask": {0: batch, 1: seq}, "static": {0: batch}}
    with _fresh_rnn_dispatch(), warnings.catch_warnings():
        # torch 2.13's exporter warns about its own internals (deprecated pytree and size
        # checks, GRU weights assigned during tracing); none of them concern this model.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*|copyreg|contextlib")
        # It also warns once per missing torchvision operator; seqchurn uses none of them.
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
        program = torch.onnx.export(
            model, tuple(_to_torch(example)), input_names=list(INPUT_NAMES), output_names=model.output_names,
            dynamic_shapes=dynamic, dynamo=True, opset_version=opset, external_data=False, verbose=False,
        )
    program.save(str(path), external_data=False)


@contextlib.contextmanager
def _fresh_rnn_dispatch() -> Iterator[None]:
    """Clear the GRU and LSTM ops' dispatch caches before and after an export.

    The exporter temporarily registers while_loop GRU and LSTM kernels that keep the
    sequence length dynamic. The ops cache the kernel they resolved, so without this a
    second export in one process reused the plain kernel and fixed the length to the
    example's, and code after an export could reuse the export-only kernel (torch 2.13).
    """
    rnn_ops = (torch.ops.aten.gru.input, torch.ops.aten.lstm.input)
    for op in rnn_ops:
        op._dispatch_cache.clear()
    try:
        yield
    finally:
        for op in rnn_ops:
            op._dispatch_cache.clear()


def verify_card(model_dir: str | Path) -> dict[str, Any]:
    """Read ``model.json`` and raise InputError unless its digest matches ``model.onnx`` and the card.

    Returns the card. ``seqchurn score`` runs the same check when it loads a model.
    """
    model_dir = Path(model_dir)
    onnx_path, card_path = model_dir / MODEL_FILE, model_dir / CARD_FILE
    for path in (onnx_path, card_path):
        if not path.is_file():
            raise InputError("model file not found", file=str(path), hint="Run `seqchurn export` first, or fix the model folder")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"the model card is not valid JSON: {exc}", file=str(card_path), hint="Re-export the model") from None
    if model_digest(onnx_path.read_bytes(), card) != card.get("sha256"):
        raise InputError(
            "model digest mismatch: model.onnx or model.json changed after export", file=str(model_dir),
            hint="Re-export the model; never edit model.json by hand",
        )
    return card


def export(ckpt_dir: str | Path, *, ckpt: str | None = None, out_dir: str | Path | None = None, tolerance: float = 1e-4) -> Path:
    """Export the model trained into ``ckpt_dir``; return the ONNX path."""
    ckpt_dir = Path(ckpt_dir)
    summary_path = ckpt_dir / "training_summary.json"
    if not summary_path.exists():
        raise InputError("no training_summary.json here; run `seqchurn train` first or point ckpt_dir at its checkpoint folder", file=str(ckpt_dir))
    summary = json.loads(summary_path.read_text())
    ckpt_path = Path(ckpt or summary.get("best_checkpoint") or ckpt_dir / "best.ckpt")
    if not ckpt_path.exists():
        raise InputError("checkpoint not found", file=str(ckpt_path))
    out_dir = Path(out_dir or ckpt_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    net = load_net(summary, ckpt_path)
    model = ScoringModel(net, summary.get("temperature", 1.0), hazard=summary.get("hazard")).eval()
    val = _validation_arrays(summary)
    card = _model_card(summary, model, val)
    card["pseudonym_key_id"] = _pseudonym_key_id(summary)

    example = pad_to(val.take(np.arange(min(4, len(val)))), val.mask.shape[1])
    onnx_path = out_dir / MODEL_FILE
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / MODEL_FILE
        export_onnx(model, example, tmp_path)
        card["parity_max_abs_diff"] = check_parity(model, tmp_path, val, tolerance)
        proto = onnx.load(str(tmp_path))
        del proto.metadata_props[:]
        meta = proto.metadata_props.add()
        meta.key, meta.value = "seqchurn", json.dumps({k: v for k, v in card.items() if k != "drift_reference"}, default=str)
        onnx_bytes = proto.SerializeToString()
    card["sha256"] = model_digest(onnx_bytes, card)
    with atomic_path(onnx_path) as tmp_onnx:
        tmp_onnx.write_bytes(onnx_bytes)
    atomic_write_json(out_dir / CARD_FILE, card)
    log.info("exported %s (version %s, threshold %.3f, parity %.1e)", onnx_path, card["model_version"], card["threshold"], card["parity_max_abs_diff"])
    return onnx_path


def _validation_arrays(summary: dict) -> SequenceArrays:
    """Real validation sequences, rebuilt (or read from the cache) from the training data config."""
    from seqchurn.data.datamodule import ChurnDataModule

    data_cfg = summary["data_config"]
    dm = ChurnDataModule(data_cfg, batch_size=256, cache_dir=data_cfg.get("cache_dir"))
    dm.prepare()
    if dm.spec.to_dict() != FeatureSpec.from_dict(summary["feature_spec"]).to_dict():
        raise InputError(
            "the validation data rebuilt from the training config no longer matches the checkpoint's feature spec "
            "(the log or its config changed since training)", hint="Re-train, or restore the original log",
        )
    return dm.arrays["val"]


def _pseudonym_key_id(summary: dict) -> str | None:
    """Return the id of the key that pseudonymised the training ids, or None for raw ids.

    The training summary's record wins. Otherwise the key configured now is taken, which
    matches training when export runs in the same environment.
    """
    if "pseudonym_key_id" in summary:
        return summary["pseudonym_key_id"]
    return LogSpec.from_config(summary["data_config"]).pseudonym_key_id


def _without_nan(value: Any) -> Any:
    """Replace NaN and infinity (e.g. AUROC of a one-class split) by None, so the card is strict JSON."""
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _input_roles(data_config: dict) -> list[str]:
    """Column roles that feed the features and were mapped in every training source; a scored log must map them too."""
    feature_roles = {"event_type", "amount", "quantity", "item_id", "order_id"}
    per_source = []
    for src in data_config.get("sources") or []:
        mapped = {role for role, column in (src.get("columns") or {}).items() if column}
        if {"quantity", "unit_price"} <= mapped:
            mapped.add("amount")
        per_source.append(mapped & feature_roles)
    return sorted(set.intersection(*per_source)) if per_source else []


def _model_card(summary: dict, model: nn.Module, val: SequenceArrays) -> dict[str, Any]:
    created = dt.datetime.now(dt.timezone.utc)
    version = f"{summary['run_name']}-{created:%Y%m%d%H%M%S}"
    val_prob = _outputs(model, val.as_inputs())[0]
    spec = FeatureSpec.from_dict(summary["feature_spec"])
    hazard = summary.get("hazard")
    card = {
        "format_version": 1,
        "model_version": version,
        "model_name": summary["model_name"],
        "created_at": created.isoformat(),
        "input_names": list(INPUT_NAMES),
        "output_names": model.output_names,
        "input_roles": _input_roles(summary["data_config"]),
        # Hazard head: bins, bin width, the horizons of the horizon_probability output, test metrics.
        "hazard": hazard,
        "feature_spec": summary["feature_spec"],
        "churn_definition": summary["churn_definition"],
        "threshold": summary["threshold"],
        "threshold_strategy": summary["threshold_strategy"],
        "temperature": summary["temperature"],
        "data_name": summary["data_name"],
        "data_fingerprint": summary["data_fingerprint"],
        "val_metrics": summary["val_metrics"],
        "test_metrics": summary["test_metrics"],
        "val_score_quantiles": np.quantile(val_prob, np.linspace(0, 1, 11)).tolist(),
        # Distributions of the inputs and scores on validation; `seqchurn score` compares
        # each run against them (PSI, see seqchurn.drift.score_drift).
        "drift_reference": model_reference(val, spec, val_prob, n_bins=DRIFT_BINS),
    }
    return _without_nan(card)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
@exits_on_error
def main(cfg: DictConfig) -> None:
    ckpt_dir = Path(hydra.utils.to_absolute_path(cfg.ckpt_dir))
    out_dir = Path(hydra.utils.to_absolute_path(cfg.out_dir)) if cfg.get("out_dir") else ckpt_dir
    # The summary goes beside the model; a run that fails before the folder exists
    # leaves it in Hydra's run folder instead.
    summary_dir = out_dir if out_dir.is_dir() else Path(cfg.paths.output_dir)
    summary_dir.mkdir(parents=True, exist_ok=True)
    with track_run("export", summary_dir / SUMMARY_FILE, config=OmegaConf.to_container(cfg, resolve=True)) as summary:
        with summary.stage("export"):
            onnx_path = export(ckpt_dir, ckpt=cfg.get("ckpt"), out_dir=out_dir, tolerance=cfg.parity_tolerance)
        card = json.loads((onnx_path.parent / CARD_FILE).read_text(encoding="utf-8"))
        summary.details.update(
            {
                "model": str(onnx_path),
                "model_version": card["model_version"],
                "sha256": card["sha256"],
                "parity_max_abs_diff": card["parity_max_abs_diff"],
                "pseudonymised": card.get("pseudonym_key_id") is not None,
                "drift_reference": bool(card.get("drift_reference")),
            }
        )


if __name__ == "__main__":
    main()
