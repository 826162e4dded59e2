"""Transformer encoder: padding, order and batch invariances, time positions, ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from seqchurn.conf_utils import CONFIG_DIR
from seqchurn.data.sequences import NUMERIC_FEATURES, SequenceArrays
from seqchurn.export import ScoringModel, check_parity, export_onnx, pad_to
from seqchurn.models.churn_module import INPUT_NAMES
from seqchurn.models.components.transformer import TIME_FEATURE, TransformerEncoder

N_TYPES, N_ITEMS, N_NUMERIC, N_STATIC = 6, 40, len(NUMERIC_FEATURES), 10
TOLERANCE = 1e-6


def make_arrays(n: int = 24, max_len: int = 12, seed: int = 0) -> SequenceArrays:
    """Random right-padded inputs; row 0 has one event, row 1 the full length."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, n)
    lengths[0], lengths[1] = 1, max_len
    mask = np.arange(max_len)[None, :] < lengths[:, None]
    return SequenceArrays(
        event_type=np.where(mask, rng.integers(0, N_TYPES, (n, max_len)), 0).astype(np.int64),
        item=np.where(mask, rng.integers(1, N_ITEMS, (n, max_len)), 0).astype(np.int64),
        numeric=np.where(mask[..., None], rng.normal(size=(n, max_len, N_NUMERIC)), 0.0).astype(np.float32),
        mask=mask,
        static=rng.normal(size=(n, N_STATIC)).astype(np.float32),
    )


def make_net(seed: int = 0, **kwargs) -> TransformerEncoder:
    torch.manual_seed(seed)
    params = {"hidden_size": 16, "num_layers": 2, "num_heads": 2, **kwargs}
    return TransformerEncoder(N_TYPES, N_ITEMS, N_NUMERIC, N_STATIC, **params).eval()


def logits(net: torch.nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return net(*(torch.as_tensor(np.ascontiguousarray(inputs[k])) for k in INPUT_NAMES))[:, 0].numpy()


def trimmed(arrays: SequenceArrays, length: int) -> dict[str, np.ndarray]:
    """Right-padded inputs cut to ``length`` time steps (no row may be longer)."""
    inputs = arrays.as_inputs()
    return {k: (v if k == "static" else np.ascontiguousarray(v[:, :length])) for k, v in inputs.items()}


def scatter_padding(arrays: SequenceArrays, length: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Place each row's events, in order, at random positions of a ``length``-long row."""
    rng = np.random.default_rng(seed)
    n, T = arrays.mask.shape
    out = {k: np.zeros((n, length) + v.shape[2:], dtype=v.dtype) for k, v in arrays.as_inputs().items() if k != "static"}
    out["static"] = arrays.static
    for i in range(n):
        k = int(arrays.mask[i].sum())
        slots = np.sort(rng.choice(length, size=k, replace=False))
        for name in ("event_type", "item", "numeric", "mask"):
            out[name][i, slots] = getattr(arrays, name)[i, :k]
    return out


def test_padding_length_and_side() -> None:
    arrays = make_arrays()
    net = make_net()
    T = arrays.mask.shape[1]
    expected = logits(net, pad_to(arrays, T))

    rng = np.random.default_rng(2)
    cases = {
        "longer right padding": pad_to(arrays, T + 17),
        "left padding": pad_to(arrays, T + 5, left=np.ones(len(arrays), bool)),
        "mixed sides": pad_to(arrays, T + 9, left=rng.random(len(arrays)) < 0.5),
        "scattered padding": scatter_padding(arrays, T + 11),
    }
    for name, inputs in cases.items():
        got = logits(net, inputs)
        assert np.max(np.abs(got - expected)) <= TOLERANCE, name


def test_batch_order_and_batch_size() -> None:
    arrays = make_arrays()
    net = make_net()
    T = arrays.mask.shape[1]
    expected = logits(net, pad_to(arrays, T))

    perm = np.random.default_rng(3).permutation(len(arrays))
    shuffled = logits(net, pad_to(arrays.take(perm), T))
    assert np.max(np.abs(shuffled - expected[perm])) <= TOLERANCE

    one_by_one = np.array([logits(net, pad_to(arrays.take(np.array([i])), T))[0] for i in range(6)])
    assert np.max(np.abs(one_by_one - expected[:6])) <= 1e-5


def test_single_event_customer() -> None:
    arrays = make_arrays()
    net = make_net()
    alone = trimmed(arrays.take(np.array([0])), 1)  # one event, no padding at all
    assert alone["mask"].sum() == 1

    value = logits(net, alone)
    in_batch = logits(net, pad_to(arrays, 30))[0]

    assert np.isfinite(value).all()
    assert abs(float(value[0]) - float(in_batch)) <= TOLERANCE


def test_empty_history_is_finite() -> None:
    # Scoring never builds a row without events, but a fully padded row must not yield
    # NaN (the summary token keeps one key unmasked).
    arrays = make_arrays()
    inputs = pad_to(arrays, 12)
    inputs["mask"][3] = False
    net = make_net()
    assert np.isfinite(logits(net, inputs)).all()


def test_order_comes_from_timestamps() -> None:
    arrays = make_arrays()
    net = make_net()
    row = arrays.take(np.array([1]))  # full length
    base = logits(net, pad_to(row, 12))

    # Reversing the events together with their times keeps the same events at the same
    # times, so the output must not change: position is the time, not the index.
    reversed_row = SequenceArrays(row.event_type[:, ::-1], row.item[:, ::-1], row.numeric[:, ::-1], row.mask[:, ::-1], row.static)
    assert np.max(np.abs(logits(net, pad_to(reversed_row, 12)) - base)) <= TOLERANCE

    # Moving one event in time changes the output even though nothing else does.
    shifted = SequenceArrays(row.event_type, row.item, row.numeric.copy(), row.mask, row.static)
    shifted.numeric[0, 0, TIME_FEATURE] += 1.5
    assert np.max(np.abs(logits(net, pad_to(shifted, 12)) - base)) > 1e-4


def test_training_backward_with_padding() -> None:
    arrays = make_arrays()
    net = make_net(dropout=0.1).train()
    inputs = [torch.as_tensor(v) for v in (pad_to(arrays, 15)[k] for k in INPUT_NAMES)]
    loss = net(*inputs)[:, 0].sigmoid().mean()
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert net.time_encoding.frequency.grad is not None
    assert net.summary_token.grad is not None


def test_invalid_sizes_raise() -> None:
    with pytest.raises(ValueError, match="multiple of `num_heads`"):
        make_net(hidden_size=18, num_heads=4)
    with pytest.raises(ValueError, match="time_feature"):
        make_net(time_feature=N_NUMERIC)
    with pytest.raises(ValueError, match="even"):
        make_net(hidden_size=15, num_heads=5)


def test_time_feature_default_matches_spec() -> None:
    assert NUMERIC_FEATURES[TIME_FEATURE] == "log_days_before_cutoff"


def test_model_config_instantiates() -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["model=transformer", "model.net.hidden_size=32"])
    GlobalHydra.instance().clear()

    net = instantiate(cfg.model.net, n_event_types=N_TYPES, n_items=N_ITEMS, n_numeric=N_NUMERIC, n_static=N_STATIC)

    assert isinstance(net, TransformerEncoder)
    assert cfg.model.name == "transformer"
    assert net.summary_token.shape[-1] == 32
    assert logits(net.eval(), pad_to(make_arrays(n=4), 12)).shape == (4,)


@pytest.mark.slow
def test_wide_onnx_export_parity(tmp_path: Path) -> None:
    arrays = make_arrays(n=40, max_len=10)
    model = ScoringModel(make_net(seed=2, wide=True), temperature=1.3).eval()
    path = tmp_path / "model.onnx"

    export_onnx(model, pad_to(arrays.take(np.arange(4)), 10), path)

    assert model.net.head.wide is not None
    assert check_parity(model, path, arrays, tolerance=1e-4) <= 1e-4


@pytest.mark.slow
def test_onnx_export_parity(tmp_path: Path) -> None:
    arrays = make_arrays(n=70, max_len=12)
    model = ScoringModel(make_net(seed=5), temperature=1.7).eval()
    path = tmp_path / "model.onnx"

    export_onnx(model, pad_to(arrays.take(np.arange(4)), 12), path)
    # Two batch sizes (3 and 64) x two padded lengths (12 and 25), mixed padding sides.
    worst = check_parity(model, path, arrays, tolerance=1e-4)
    assert worst <= 1e-4

    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    single = trimmed(arrays.take(np.array([0])), 1)  # one event, sequence length 1
    got = session.run(None, {k: np.ascontiguousarray(single[k]) for k in INPUT_NAMES})[0]
    with torch.no_grad():
        expected = model(*(torch.as_tensor(single[k]) for k in INPUT_NAMES)).numpy()
    assert got.shape == (1,)
    assert abs(float(got[0]) - float(expected[0])) <= 1e-4
