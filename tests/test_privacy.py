import hashlib
import hmac
import logging
import re

import numpy as np
import pandas as pd
import pytest

from seqchurn.data.schema import InputError
from seqchurn.privacy import KEY_ENV_VAR, load_key, pseudonymise, reidentify, scan_for_raw_ids

KEY = b"0123456789abcdef0123456789abcdef"
OTHER_KEY = b"fedcba9876543210fedcba9876543210"
TOKEN_PATTERN = re.compile(r"^p_[0-9a-f]{32}$")


def reference_token(raw_id: str, key: bytes) -> str:
    return "p_" + hmac.new(key, raw_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def test_pseudonymise_matches_plain_hmac():
    ids = pd.Series(["C1", "00123", "123", "kunde-ä", "C1"], dtype="str")

    tokens = pseudonymise(ids, KEY)

    assert tokens.tolist() == [reference_token(i, KEY) for i in ids]
    assert all(TOKEN_PATTERN.match(t) for t in tokens)


def test_pseudonymise_is_deterministic():
    ids = pd.Series([f"C{i}" for i in range(200)] * 3, dtype="str")

    first = pseudonymise(ids, KEY)
    second = pseudonymise(ids.sample(frac=1.0, random_state=0), KEY)

    assert first.equals(pseudonymise(ids, KEY))
    # The token of a row depends on its id only, not on the order or the other rows.
    assert second.sort_index().equals(first)


def test_pseudonymise_keys_differ():
    ids = pd.Series([f"C{i}" for i in range(100)], dtype="str")

    tokens = pseudonymise(ids, KEY)
    other = pseudonymise(ids, OTHER_KEY)

    assert not (tokens == other).any()


def test_pseudonymise_keeps_leading_zeros():
    tokens = pseudonymise(pd.Series(["00123", "123", "0123"], dtype="str"), KEY)

    assert tokens.nunique() == 3


def test_pseudonymise_distinct_ids_distinct_tokens():
    ids = pd.Series([f"{i:06d}" for i in range(20_000)], dtype="str")

    tokens = pseudonymise(ids, KEY)

    assert tokens.nunique() == len(ids)


def test_pseudonymise_keeps_index_and_missing():
    ids = pd.Series(["A", None, "B", "A"], index=[10, 11, 12, 13], dtype="str", name="customer_id")

    tokens = pseudonymise(ids, KEY)

    assert tokens.index.tolist() == [10, 11, 12, 13]
    assert tokens.name == "customer_id"
    assert tokens.isna().tolist() == [False, True, False, False]
    assert tokens[10] == tokens[13]
    assert tokens[10] != tokens[12]


def test_pseudonymise_accepts_numpy_and_lists():
    expected = [reference_token("A", KEY), reference_token("B", KEY)]

    assert pseudonymise(np.array(["A", "B"], dtype=object), KEY).tolist() == expected
    assert pseudonymise(["A", "B"], KEY).tolist() == expected


def test_pseudonymise_empty_input():
    tokens = pseudonymise(pd.Series([], dtype="str"), KEY)

    assert len(tokens) == 0


def test_pseudonymise_rejects_integer_ids():
    with pytest.raises(ValueError, match="Expected string ids") as error:
        pseudonymise(np.array([98765, 43210]), KEY)

    assert scan_for_raw_ids(str(error.value), ["98765", "43210"]) == []


def test_pseudonymise_rejects_short_key():
    with pytest.raises(ValueError, match="length >= 16"):
        pseudonymise(["A"], b"short")


def test_reidentify_round_trip():
    raw = pd.Series(["00123", "123", "C9", "C9", "zz"], dtype="str")
    tokens = pseudonymise(raw, KEY)

    mapping = reidentify(tokens, raw, KEY)

    assert mapping.columns.tolist() == ["token", "raw_id"]
    assert mapping["token"].tolist() == list(dict.fromkeys(tokens))
    assert mapping["raw_id"].tolist() == ["00123", "123", "C9", "zz"]


def test_reidentify_unmatched_token_warns(caplog):
    raw = ["A", "B"]
    tokens = [*pseudonymise(["A"], KEY), reference_token("not-in-log", KEY)]

    with caplog.at_level(logging.WARNING, logger="seqchurn.privacy"):
        mapping = reidentify(tokens, raw, KEY)

    assert mapping["raw_id"].isna().tolist() == [False, True]
    assert "1 of 2 tokens match no id" in caplog.text


def test_reidentify_wrong_key_raises():
    raw = ["A", "B"]
    tokens = pseudonymise(raw, KEY)

    with pytest.raises(InputError, match="none of the 2 tokens match"):
        reidentify(tokens, raw, OTHER_KEY)


def test_load_key_from_environment(monkeypatch):
    monkeypatch.setenv(KEY_ENV_VAR, "  " + KEY.decode() + "\n")

    assert load_key() == KEY


def test_load_key_unset_returns_none(monkeypatch):
    monkeypatch.delenv(KEY_ENV_VAR, raising=False)

    assert load_key() is None


def test_load_key_from_file(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV_VAR, OTHER_KEY.decode())
    key_file = tmp_path / "pseudonym.key"
    key_file.write_bytes(KEY + b"\n")
    key_file.chmod(0o600)

    assert load_key(key_file=key_file) == KEY


def test_load_key_missing_file(tmp_path):
    missing = tmp_path / "nope.key"

    with pytest.raises(InputError, match="key file not found") as error:
        load_key(key_file=missing)

    assert str(missing) in str(error.value)
    assert "openssl rand -hex 32" in str(error.value)


def test_load_key_empty_file(tmp_path):
    key_file = tmp_path / "empty.key"
    key_file.write_bytes(b"\n")

    with pytest.raises(InputError, match="is empty"):
        load_key(key_file=key_file)


def test_load_key_short_key(tmp_path, monkeypatch):
    key_file = tmp_path / "short.key"
    key_file.write_bytes(b"abc")
    monkeypatch.setenv(KEY_ENV_VAR, "abc")

    with pytest.raises(InputError, match="too short: 3 bytes"):
        load_key(key_file=key_file)
    with pytest.raises(InputError, match=f"environment variable {KEY_ENV_VAR}"):
        load_key()


def test_load_key_never_logged(tmp_path, caplog):
    key_file = tmp_path / "pseudonym.key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o644)

    with caplog.at_level(logging.DEBUG, logger="seqchurn.privacy"):
        load_key(key_file=key_file)

    assert "other users can read it" in caplog.text
    assert KEY.decode() not in caplog.text
    assert KEY.decode()[:8] not in caplog.text


def test_scan_finds_whole_ids_only():
    text = "scored customer 123; next 00123x and p_123abc, then C-7."

    assert scan_for_raw_ids(text, ["123", "00123", "C-7", "999"]) == ["123", "C-7"]


def test_scan_prefers_longer_ids():
    assert scan_for_raw_ids("id=00123 and 0012", ["0012", "00123"]) == ["00123", "0012"]


def test_pseudonymised_output_leaks_no_raw_id():
    raw = pd.Series([f"{i:05d}" for i in range(50)], dtype="str")
    frame = pd.DataFrame({"customer_id": pseudonymise(raw, KEY), "score": np.linspace(0, 1, 50)})

    assert scan_for_raw_ids(frame.to_csv(index=False), raw) == []
    assert scan_for_raw_ids(pd.DataFrame({"customer_id": raw}).to_csv(index=False), raw) == raw.tolist()
