"""Lightning checkpoint writing that survives a killed process.

Lightning's ``TorchCheckpointIO`` (pytorch-lightning 2.6) writes a local checkpoint to a
temporary file from ``tempfile.mkstemp`` and moves it into place with ``shutil.move``.
When the temporary directory is on another file system, that move is a copy, so a
process killed during it leaves a truncated ``last.ckpt`` that ``resume=true`` cannot
load. :class:`AtomicCheckpointIO` writes beside the target and renames it after an
fsync (see :mod:`seqchurn.utils.atomic`), so a checkpoint is either the old one or the
new one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from seqchurn.utils.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic writes for local paths; remote URLs keep Lightning's own writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None) -> None:
        if "://" in os.fspath(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"Expected no `storage_options` for a local checkpoint path, but got {storage_options!r}")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as temp:
            torch.save(checkpoint, temp)
