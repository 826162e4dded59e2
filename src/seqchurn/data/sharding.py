"""Stable customer hashing, so that every customer's events land in one shard.

A shard assignment is stored on disk (the ``bucket=`` directories of a partitioned
dataset) and recomputed later by other processes, machines and library versions, so the
hash must not depend on any of them. Python's built-in ``hash`` of a ``str`` is salted per
process (``PYTHONHASHSEED``) and cannot be used.

``customer_hash`` uses ``pandas.util.hash_array`` with an explicit key and encoding. The
algorithm behind it is fixed and fully specified:

1. SipHash-2-4 of the id's UTF-8 bytes, with the 16 ASCII bytes of ``HASH_KEY`` as key.
2. The splitmix64 finaliser on that integer: ``x ^= x >> 30; x *= 0xBF58476D1CE4E5B9;
   x ^= x >> 27; x *= 0x94D049BB133111EB; x ^= x >> 31`` (modulo 2**64).

pandas (checked in ``pandas/core/util/hashing.py`` of pandas 3.1) computes this in C and
needs no new dependency, whereas ``xxhash`` has no vectorised API and would need a Python
loop per id. ``tests/test_sharding.py`` checks the output against a pure-Python
implementation of the two steps, so a pandas release that changed the hash would fail.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

HASH_KEY = "0123456789123456"
"""SipHash key (16 ASCII characters). Changing it moves every customer to another shard."""

HASH_ENCODING = "utf8"


def _as_object_array(ids: Iterable[str] | np.ndarray | pd.Series | pd.Index) -> np.ndarray:
    """Return ``ids`` as a 1-dimensional object array of ``str``, or raise ``ValueError``."""
    if isinstance(ids, str):
        raise ValueError(f"Expected a sequence of customer ids, but got a single string {ids!r}")
    if isinstance(ids, (pd.Series, pd.Index)):
        values = ids.to_numpy(dtype=object)
    else:
        values = np.asarray(ids, dtype=object)
    if values.ndim != 1:
        raise ValueError(f"Expected a 1-dimensional sequence of customer ids, but got shape {values.shape}")

    missing = pd.isna(values)
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        raise ValueError(
            f"Expected every customer id to be a string, but {int(missing.sum())} are missing "
            f"(first at position {first}). Drop or fill missing ids before sharding."
        )
    kind = pd.api.types.infer_dtype(values, skipna=False)
    if len(values) and kind != "string":
        # pandas would hash str(value) for other types, so 123 and "123" would share a shard.
        raise ValueError(f"Expected customer ids as strings, but got values of type {kind!r}, e.g. {values[0]!r}")
    return values


def customer_hash(ids: Iterable[str] | np.ndarray | pd.Series | pd.Index) -> np.ndarray:
    """Hash string customer ids to ``uint64``, identically in every process and on every machine.

    ``ids`` is any 1-dimensional sequence of ``str`` (list, numpy array, pandas Series or
    Index, including pandas' ``str`` dtype). Repeated ids are hashed once. Raises
    ``ValueError`` on missing ids or non-string values.
    """
    values = _as_object_array(ids)
    if len(values) == 0:
        return np.zeros(0, dtype=np.uint64)
    # categorize=True hashes each distinct id once; the values are the same either way.
    return pd.util.hash_array(values, encoding=HASH_ENCODING, hash_key=HASH_KEY, categorize=True)


def shard_of(ids: Iterable[str] | np.ndarray | pd.Series | pd.Index, n_shards: int) -> np.ndarray:
    """Return the shard number in ``[0, n_shards)`` of each customer id: ``customer_hash(ids) % n_shards``."""
    if isinstance(n_shards, bool) or not isinstance(n_shards, (int, np.integer)) or n_shards < 1:
        raise ValueError(f"Expected `n_shards` to be a positive integer, but got {n_shards!r}")
    return (customer_hash(ids) % np.uint64(n_shards)).astype(np.int64)


def parse_shard(text: str) -> tuple[int, int]:
    """Parse a shard spec ``"i/n"`` (shard ``i`` of ``n``, counted from 0) into ``(i, n)``.

    Raises ``ValueError`` naming the value unless ``i`` and ``n`` are integers with ``0 <= i < n``.
    """
    if not isinstance(text, str):
        raise ValueError(f"Expected a shard spec like '0/4' (shard i of n, 0 <= i < n), but got {text!r}")
    parts = text.strip().split("/")
    if len(parts) != 2:
        raise ValueError(f"Invalid shard spec {text!r}: expected 'i/n', for example '0/4' for the first of 4 shards")
    try:
        index, count = int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(f"Invalid shard spec {text!r}: i and n in 'i/n' must be integers, for example '0/4'") from None
    if count < 1:
        raise ValueError(f"Invalid shard spec {text!r}: the number of shards n must be at least 1")
    if not 0 <= index < count:
        raise ValueError(f"Invalid shard spec {text!r}: the shard index must satisfy 0 <= i < n, so use 0 to {count - 1}")
    return index, count
