"""Tests for stable customer hashing and shard specs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from seqchurn.data.sharding import HASH_KEY, customer_hash, parse_shard, shard_of

MASK64 = (1 << 64) - 1
SRC_DIR = str(Path(__file__).resolve().parents[1] / "src")


def _rotl(x: int, bits: int) -> int:
    return ((x << bits) | (x >> (64 - bits))) & MASK64


def _siphash24(key: bytes, data: bytes) -> int:
    """Return SipHash-2-4 (Aumasson and Bernstein, 2012) of ``data``, as a plain-Python reference."""
    k0 = int.from_bytes(key[:8], "little")
    k1 = int.from_bytes(key[8:16], "little")
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D, k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]

    def sipround() -> None:
        v[0] = (v[0] + v[1]) & MASK64
        v[1] = _rotl(v[1], 13) ^ v[0]
        v[0] = _rotl(v[0], 32)
        v[2] = (v[2] + v[3]) & MASK64
        v[3] = _rotl(v[3], 16) ^ v[2]
        v[0] = (v[0] + v[3]) & MASK64
        v[3] = _rotl(v[3], 21) ^ v[0]
        v[2] = (v[2] + v[1]) & MASK64
        v[1] = _rotl(v[1], 17) ^ v[2]
        v[2] = _rotl(v[2], 32)

    full = len(data) - len(data) % 8
    for start in range(0, full, 8):
        word = int.from_bytes(data[start : start + 8], "little")
        v[3] ^= word
        sipround()
        sipround()
        v[0] ^= word
    last = ((len(data) & 0xFF) << 56) | int.from_bytes(data[full:], "little")
    v[3] ^= last
    sipround()
    sipround()
    v[0] ^= last
    v[2] ^= 0xFF
    for _ in range(4):
        sipround()
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def _splitmix64_finaliser(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def _reference_hash(customer_id: str) -> int:
    return _splitmix64_finaliser(_siphash24(HASH_KEY.encode("ascii"), customer_id.encode("utf-8")))


def test_reference_siphash_matches_published_vector():
    # Published SipHash-2-4 test vector: key bytes 00..0f, 15-byte message 00..0e.
    assert _siphash24(bytes(range(16)), bytes(range(15))) == 0xA129CA6149BE45E5


IDS = ["C0000123", "", "a", "customer-with-a-long-id-of-more-than-16-bytes", "Kunde_Müller", "顧客42", "12345678"]


def test_customer_hash_matches_reference():
    got = customer_hash(IDS)
    assert got.dtype == np.uint64
    expected = np.array([_reference_hash(i) for i in IDS], dtype=np.uint64)
    np.testing.assert_array_equal(got, expected)


def test_customer_hash_input_types_agree():
    expected = customer_hash(IDS)
    np.testing.assert_array_equal(customer_hash(np.array(IDS)), expected)
    np.testing.assert_array_equal(customer_hash(np.array(IDS, dtype=object)), expected)
    np.testing.assert_array_equal(customer_hash(pd.Series(IDS, dtype="str")), expected)
    np.testing.assert_array_equal(customer_hash(pd.Index(IDS)), expected)
    np.testing.assert_array_equal(customer_hash(IDS * 3), np.tile(expected, 3))


def test_customer_hash_empty():
    assert customer_hash([]).dtype == np.uint64
    assert len(customer_hash([])) == 0


@pytest.mark.parametrize("bad", [[1, 2], ["a", None], ["a", float("nan")], ["a", 3], "C0001", [["a"], ["b"]]])
def test_customer_hash_rejects_bad_ids(bad):
    with pytest.raises(ValueError, match="customer id"):
        customer_hash(bad)


_CHILD = """
import json, sys
from seqchurn.data.sharding import customer_hash, shard_of
ids = [f"C{i:07d}" for i in range(2000)] + ["Kunde_Müller", "顧客42", ""]
print(json.dumps({"hash": [int(h) for h in customer_hash(ids)], "shard": shard_of(ids, 7).tolist()}))
"""


def _run_child(hash_seed: str) -> dict:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=SRC_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def test_hash_same_across_processes():
    first = _run_child("1")
    second = _run_child("2")
    assert first == second

    ids = [f"C{i:07d}" for i in range(2000)] + ["Kunde_Müller", "顧客42", ""]
    assert first["hash"] == [int(h) for h in customer_hash(ids)]
    assert first["shard"] == shard_of(ids, 7).tolist()


def test_shard_of_roughly_uniform():
    ids = [f"C{i:07d}" for i in range(40_000)]
    n_shards = 16
    shards = shard_of(ids, n_shards)
    assert shards.dtype == np.int64
    assert shards.min() >= 0
    assert shards.max() < n_shards

    counts = np.bincount(shards, minlength=n_shards)
    # Under a uniform hash the chi-square p-value is uniform on [0, 1]. The bound 1e-4
    # leaves room for chance but catches a hash that clusters sequential ids.
    assert stats.chisquare(counts).pvalue > 1e-4
    assert counts.min() > 0.9 * len(ids) / n_shards


def test_shard_of_equals_hash_modulo():
    ids = [f"C{i:07d}" for i in range(100)]
    np.testing.assert_array_equal(shard_of(ids, 5), (customer_hash(ids) % np.uint64(5)).astype(np.int64))
    assert (shard_of(ids, 1) == 0).all()


@pytest.mark.parametrize("n_shards", [0, -3, 2.0, "4", True, None])
def test_shard_of_rejects_bad_count(n_shards):
    with pytest.raises(ValueError, match="n_shards"):
        shard_of(["a"], n_shards)


@pytest.mark.parametrize(("text", "expected"), [("0/1", (0, 1)), ("3/4", (3, 4)), (" 2/10 ", (2, 10)), ("0/4", (0, 4))])
def test_parse_shard_valid(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["4/4", "-1/4", "0/0", "1/-2", "a/4", "1/b", "1", "1/2/3", "", "1.0/4"])
def test_parse_shard_rejects_invalid(text):
    with pytest.raises(ValueError) as info:
        parse_shard(text)
    assert repr(text) in str(info.value)


def test_parse_shard_rejects_non_string():
    with pytest.raises(ValueError, match="shard spec"):
        parse_shard(3)
