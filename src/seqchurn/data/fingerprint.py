"""Fingerprints of input files and configs, for cache keys and the exported model card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def fingerprint_config(obj: Any) -> str:
    """SHA-256 hex digest of ``obj`` as canonical JSON (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint_files(paths: list[str]) -> list[dict]:
    """Path, size and modification time of every file under ``paths`` (cheap, no reading).

    NOTE: a file rewritten in place with the same size within the same mtime tick keeps its
    fingerprint; delete the cache directory after such an edit.
    """
    out = []
    for p in paths:
        path = Path(p)
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            st = f.stat()
            out.append({"path": str(f.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out
