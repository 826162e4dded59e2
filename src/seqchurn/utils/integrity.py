"""SHA-256 digests of files and JSON-like objects, and the model digest checked before scoring.

The model digest covers the ONNX file and the feature spec that travels with it, so
:func:`verify` rejects a model whose file or spec was edited after export:

    model_digest = sha256_hex( sha256_file(onnx) + "\\n" + canonical_json(spec) )

Both parts are hashed in UTF-8. Canonical JSON sorts keys, has no whitespace and keeps
non-ASCII characters, so the same spec always gives the same digest. Any JSON library
that does the same can recompute it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from seqchurn.data.schema import InputError


class ModelIntegrityError(InputError):
    """The model file or its feature spec do not match the digest recorded at export."""


def sha256_file(path: str | os.PathLike) -> str:
    """Return the SHA-256 hex digest of the file's bytes, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _plain(value: Any) -> Any:
    """Turn numpy scalars, numpy arrays and paths into JSON types for canonical_json."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"Cannot put a {type(value).__name__} into canonical JSON: {value!r}")


def canonical_json(obj: Any) -> str:
    """Serialise ``obj`` to canonical JSON (sorted keys, no whitespace, no NaN or infinity).

    Tuples serialise like lists, and numpy scalars like the Python numbers they contain.
    Raises ValueError for NaN or infinity, which JSON cannot represent, and TypeError for
    other objects.
    """
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_plain)
    except ValueError as exc:
        # json raises ValueError for NaN, infinity and circular references.
        raise ValueError(f"Cannot serialise to canonical JSON: {exc}. Store NaN and infinity as null or a string") from None


def fingerprint(obj: Any) -> str:
    """Return the SHA-256 hex digest of ``canonical_json(obj)``."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def model_digest(onnx_path: str | os.PathLike, spec: dict) -> str:
    """Return the digest that binds an ONNX file to its feature spec (see the module docstring)."""
    payload = sha256_file(onnx_path) + "\n" + canonical_json(spec)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def verify(onnx_path: str | os.PathLike, spec: dict, expected: str) -> None:
    """Raise ModelIntegrityError unless ``model_digest(onnx_path, spec) == expected``."""
    if not Path(onnx_path).is_file():
        raise ModelIntegrityError("model file not found", file=str(onnx_path), hint="Check the model path or re-export the model")
    actual = model_digest(onnx_path, spec)
    if actual != expected:
        raise ModelIntegrityError(
            "the model file or its feature spec were changed after export",
            file=str(onnx_path),
            value=f"digest {actual}, expected {expected}",
            hint="Re-export the model instead of editing the exported files",
        )
