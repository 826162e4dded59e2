"""LightningDataModule: event log -> snapshots -> cached, memory-mapped sequence arrays."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from seqchurn.data.io import LogSpec, load_events
from seqchurn.data.labels import SPLITS, ChurnDefinition, make_split_snapshots, plan_splits
from seqchurn.data.schema import LoadReport
from seqchurn.data.sequences import FeatureSpec, SequenceArrays, build_arrays, collapse_orders, fit_spec
from seqchurn.data.fingerprint import fingerprint_config, fingerprint_files

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the sequence layout changes so old caches are not reused
_ARRAYS = ("event_type", "item", "numeric", "mask", "static")


class SequenceDataset(Dataset):
    """Rows of :class:`SequenceArrays` (possibly memory-mapped) with their labels."""

    def __init__(self, arrays: SequenceArrays, labels: np.ndarray, time_days: np.ndarray | None = None, observed: np.ndarray | None = None) -> None:
        self.arrays, self.labels = arrays, labels.astype(np.float32)
        # Time-to-event targets for the hazard head (absent for logs built without them).
        self.time_days = None if time_days is None else time_days.astype(np.float32)
        self.observed = None if observed is None else observed.astype(np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        a = self.arrays
        # np.array copies the row: cached arrays are read-only memory maps, which torch warns about.
        return {
            "event_type": torch.from_numpy(np.array(a.event_type[i])),
            "item": torch.from_numpy(np.array(a.item[i])),
            "numeric": torch.from_numpy(np.array(a.numeric[i])),
            "mask": torch.from_numpy(np.array(a.mask[i])),
            "static": torch.from_numpy(np.array(a.static[i])),
            "label": torch.tensor(self.labels[i]),
            **(
                {"time_days": torch.tensor(self.time_days[i]), "observed": torch.tensor(self.observed[i])}
                if self.time_days is not None
                else {}
            ),
        }


def collate_trimmed(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a batch and cut the time axis to its longest sequence.

    Sequences are right-padded and most customers have far fewer than ``max_len`` events,
    so this skips most of the recurrent steps; the encoders are padding-invariant, so the
    result is unchanged.
    """
    batch = torch.utils.data.default_collate(items)
    longest = max(int(batch["mask"].sum(1).max()), 1)
    for key in ("event_type", "item", "numeric", "mask"):
        batch[key] = batch[key][:, :longest]
    return batch


class LengthBucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of similar sequence length, so trimming padding skips most recurrent steps.

    Indices are sorted by length with random tie-breaking each epoch, cut into batches and
    the batches shuffled. Under DDP each rank takes every ``world_size``-th batch (the
    batch count is rounded down to a multiple of the world size so ranks stay in step).
    The order depends on ``seed`` and the epoch: each pass advances the epoch by one, and
    :meth:`set_epoch` sets it. ChurnDataModule and ChurnLitModule set it from the trainer,
    so a resumed run gets the same batches as an uninterrupted one.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that the next pass shuffles for."""
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed + self.epoch)
        noise = rng.random(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        order = np.lexsort((noise, self.lengths))
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        rank, world = _dist_rank_world()
        if world > 1:
            usable = len(batches) - len(batches) % world
            batches = batches[rank:usable:world]
        return batches

    def __iter__(self):
        batches = self._batches()
        self.epoch += 1
        return iter([b.tolist() for b in batches])

    def __len__(self) -> int:
        rank, world = _dist_rank_world()
        n = -(-len(self.lengths) // self.batch_size)
        return n // world if world > 1 else n


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def churn_from_config(cfg: Mapping[str, Any]) -> ChurnDefinition:
    return ChurnDefinition(
        activity_types=tuple(cfg.get("activity_types", ("purchase",))),
        lookback_days=float(cfg.get("lookback_days", 365)),
        horizon_days=float(cfg.get("horizon_days", 90)),
    )


def sample_customers(events: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """Keep a deterministic ``fraction`` of customers, chosen by their stable hash."""
    if fraction >= 1.0:
        return events
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"Expected `sample_fraction` to be in (0, 1], but got {fraction}")
    from seqchurn.data.sharding import customer_hash

    uniq, inverse = np.unique(events["customer_id"].to_numpy(dtype=object), return_inverse=True)
    keep_customer = (customer_hash(uniq) % 10_000) < int(round(fraction * 10_000))
    kept = events.loc[keep_customer[inverse]].reset_index(drop=True)
    log.info("sampled %d of %d customers (sample_fraction=%g)", int(keep_customer.sum()), len(uniq), fraction)
    return kept


class ChurnDataModule(pl.LightningDataModule):
    """Builds train/val/test sequence arrays from a data config and caches them on disk.

    The cache key is a fingerprint of the input files (path, size, mtime) and every config
    value that changes the arrays, so sweep trials and repeated runs load the arrays
    memory-mapped instead of rebuilding them.
    """

    def __init__(
        self, data_cfg: Mapping[str, Any], *, batch_size: int = 256, num_workers: int = 0, cache_dir: str | None = None, seed: int = 0
    ) -> None:
        super().__init__()
        self.seed = seed
        self.data_cfg = data_cfg
        self.batch_size, self.num_workers = batch_size, num_workers
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.churn = churn_from_config(data_cfg.get("churn", {}))
        seq = data_cfg.get("sequence", {})
        self.max_len = int(seq.get("max_len", 64))
        self.item_vocab_size = int(seq.get("item_vocab_size", 2000))
        self.collapse = bool(seq.get("collapse_orders", True))
        self.aggregate = bool(seq.get("aggregate_features", False))
        self.aggregate_options: dict[str, Any] = {}
        if self.aggregate:
            from seqchurn.baselines.features import feature_options

            self.aggregate_options = feature_options(data_cfg)
        self.sample_fraction = float(data_cfg.get("sample_fraction", 1.0))
        self.spec: FeatureSpec | None = None
        self.snapshots: pd.DataFrame | None = None
        self.arrays: dict[str, SequenceArrays] = {}
        self.load_report: LoadReport | None = None
        self.data_fingerprint: str | None = None

    # -- building ------------------------------------------------------------------------

    def _fingerprint(self, spec: LogSpec) -> str:
        files = fingerprint_files([s.path for s in spec.sources])
        cfg = {k: v for k, v in _plain(self.data_cfg).items() if k not in ("batch_size", "num_workers", "cache_dir")}
        # The cached snapshots contain customer ids, so pseudonymised and raw ids (or two
        # keys) must not share a cache entry.
        return fingerprint_config({"files": files, "cfg": cfg, "pseudonym_key_id": spec.pseudonym_key_id, "version": CACHE_VERSION})[:16]

    def prepare(self) -> None:
        """Build (or load from cache) everything; idempotent."""
        if self.spec is not None:
            return
        log_spec = LogSpec.from_config(self.data_cfg)
        self.data_fingerprint = self._fingerprint(log_spec)
        cache = self.cache_dir / self.data_fingerprint if self.cache_dir else None
        if cache is not None and (cache / "done").exists():
            self._load_cache(cache)
            log.info("loaded cached sequences from %s", cache)
            return
        events, self.load_report = load_events(log_spec)
        events = sample_customers(events, self.sample_fraction)
        if self.collapse:
            events = collapse_orders(events)
        split = self.data_cfg["split"]
        plan = plan_splits(
            test_cutoff=split["test_cutoff"],
            val_cutoff=split["val_cutoff"],
            train_cutoffs=split.get("train_cutoffs"),
            train_first_cutoff=split.get("train_first_cutoff"),
            train_every_days=float(split.get("train_every_days", 30)),
            churn=self.churn,
        )
        self.snapshots = make_split_snapshots(events, plan, self.churn)
        train = self.snapshots[self.snapshots["split"] == "train"]
        self.spec = fit_spec(
            events, train, max_len=self.max_len, item_vocab_size=self.item_vocab_size,
            activity_types=list(self.churn.activity_types), collapse=self.collapse,
            aggregate=self.aggregate, aggregate_options=self.aggregate_options, lookback_days=self.churn.lookback_days,
        )
        for name in SPLITS:
            rows = self.snapshots[self.snapshots["split"] == name]
            self.arrays[name] = build_arrays(events, rows, self.spec)
        if cache is not None:
            self._write_cache(cache)

    def _write_cache(self, cache: Path) -> None:
        """Write the arrays under a private temporary name, then rename it into place.

        Parallel sweep trials may build the same entry at once: each writes its own folder,
        the first rename wins and the others discard theirs. A half-written cache never
        carries the "done" marker under its final name.
        """
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=cache.name + ".tmp-", dir=cache.parent))
        try:
            for split, arrays in self.arrays.items():
                for name in _ARRAYS:
                    np.save(tmp / f"{split}_{name}.npy", getattr(arrays, name))
            self.snapshots.to_parquet(tmp / "snapshots.parquet")
            meta = {"spec": self.spec.to_dict(), "load_report": self.load_report.to_dict() if self.load_report else None}
            (tmp / "meta.json").write_text(json.dumps(meta))
            (tmp / "done").write_text("ok")
            if cache.exists() and not (cache / "done").exists():
                shutil.rmtree(cache, ignore_errors=True)  # left by a crashed run
            try:
                tmp.rename(cache)
            except OSError:
                if not (cache / "done").exists():
                    raise
                log.info("another process wrote the sequence cache %s first; using it", cache)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _load_cache(self, cache: Path) -> None:
        meta = json.loads((cache / "meta.json").read_text())
        self.spec = FeatureSpec.from_dict(meta["spec"])
        if meta.get("load_report"):
            self.load_report = LoadReport(**meta["load_report"])
        self.snapshots = pd.read_parquet(cache / "snapshots.parquet")
        for split in SPLITS:
            parts = {name: np.load(cache / f"{split}_{name}.npy", mmap_mode="r") for name in _ARRAYS}
            self.arrays[split] = SequenceArrays(**parts)

    # -- Lightning hooks -----------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def labels(self, split: str) -> np.ndarray:
        return self.snapshots.loc[self.snapshots["split"] == split, "label"].to_numpy()

    def dataset(self, split: str) -> SequenceDataset:
        rows = self.snapshots[self.snapshots["split"] == split]
        if "days_to_activity" in rows:
            return SequenceDataset(self.arrays[split], self.labels(split), rows["days_to_activity"].to_numpy(), rows["activity_observed"].to_numpy())
        return SequenceDataset(self.arrays[split], self.labels(split))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        lengths = np.asarray(self.arrays[split].mask).sum(1)
        sampler = LengthBucketBatchSampler(lengths, self.batch_size, shuffle=shuffle, seed=self.seed)
        return DataLoader(
            self.dataset(split), batch_sampler=sampler, num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0, collate_fn=collate_trimmed,
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", shuffle=True)
        if self.trainer is not None:
            # Lightning creates the first epoch's iterator before any epoch hook runs, so a
            # resumed run must start the sampler at the restored epoch here.
            loader.batch_sampler.set_epoch(self.trainer.current_epoch)
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def net_dims(self) -> dict[str, int]:
        """Sizes the encoder needs, known only after the data is built."""
        self.prepare()
        return {
            "n_event_types": len(self.spec.event_types),
            "n_items": self.spec.n_items,
            "n_numeric": len(self.spec.numeric_features),
            "n_static": len(self.spec.static_features),
        }


def _plain(cfg: Any) -> Any:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
