"""Model integrity: the card's digest covers model.onnx and every card field, tampering is rejected."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

from seqchurn.data.io import LogSpec, check_same_pseudonymisation
from seqchurn.data.schema import InputError
from seqchurn.export import export, verify_card
from seqchurn.model_files import model_digest
from seqchurn.score import load_model
from trained_model import get_trained_model

pytestmark = pytest.mark.slow
KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, retail_slice):
    return get_trained_model(tmp_path_factory, retail_slice)


@pytest.fixture
def model_copy(trained, tmp_path):
    for name in ("model.onnx", "model.json"):
        shutil.copy(trained.model_dir / name, tmp_path / name)
    return tmp_path


def edit_card(model_dir, change) -> None:
    card = json.loads((model_dir / "model.json").read_text())
    change(card)
    (model_dir / "model.json").write_text(json.dumps(card, indent=2))


def test_untouched_model_loads(model_copy):
    card = verify_card(model_copy)

    model = load_model(model_copy)

    assert model.card["sha256"] == card["sha256"]
    assert model_digest((model_copy / "model.onnx").read_bytes(), card) == card["sha256"]


def test_flipped_onnx_byte_rejected(model_copy):
    data = bytearray((model_copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (model_copy / "model.onnx").write_bytes(bytes(data))

    with pytest.raises(InputError, match="digest mismatch"):
        load_model(model_copy)
    with pytest.raises(InputError, match="digest mismatch"):
        verify_card(model_copy)


@pytest.mark.parametrize(
    "field,change",
    [
        ("feature_spec", lambda card: card["feature_spec"]["static_mean"].__setitem__(0, card["feature_spec"]["static_mean"][0] + 1e-6)),
        ("feature_spec", lambda card: card["feature_spec"]["item_vocab"].reverse()),
        ("threshold", lambda card: card.__setitem__("threshold", 0.01)),
        ("drift_reference", lambda card: card["drift_reference"]["score"]["fractions"].reverse()),
        ("pseudonym_key_id", lambda card: card.__setitem__("pseudonym_key_id", "0" * 16)),
    ],
)
def test_edited_card_rejected(model_copy, field, change):
    edit_card(model_copy, change)

    with pytest.raises(InputError, match="digest mismatch"):
        load_model(model_copy)


def test_card_reformatting_keeps_digest(model_copy):
    """Only content counts: re-indenting and reordering keys is not tampering."""
    card = json.loads((model_copy / "model.json").read_text())
    reordered = dict(reversed(list(card.items())))
    (model_copy / "model.json").write_text(json.dumps(reordered, indent=4))

    assert verify_card(model_copy)["sha256"] == card["sha256"]


def test_missing_model_file_named(model_copy):
    (model_copy / "model.onnx").unlink()

    with pytest.raises(InputError, match="model.onnx"):
        verify_card(model_copy)


def test_second_export_keeps_dynamic_length(trained, tmp_path):
    """A later export in the same process (the shared model was exported first) keeps `seq` dynamic."""
    onnx_path = export(trained.model_dir, out_dir=tmp_path)

    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in onnx.load(str(onnx_path)).graph.input}
    assert inputs["numeric"][:2] == ["batch", "seq"]
    assert inputs["mask"] == ["batch", "seq"]
    assert verify_card(tmp_path)["parity_max_abs_diff"] <= 1e-4


def test_card_records_pseudonymisation(trained):
    card = verify_card(trained.model_dir)

    # The shared model is trained on raw ids.
    assert card["pseudonym_key_id"] is None


def test_scoring_key_must_match_training(monkeypatch, tmp_path):
    log_file = tmp_path / "log.csv"
    log_file.write_text("cid,ts\na,2021-01-01T10:00:00Z\n")
    config = {"sources": [{"path": str(log_file), "columns": {"customer_id": "cid", "timestamp": "ts"}}]}
    monkeypatch.delenv("SEQCHURN_PSEUDONYM_KEY", raising=False)
    raw = LogSpec.from_config(config)
    monkeypatch.setenv("SEQCHURN_PSEUDONYM_KEY", KEY)
    keyed = LogSpec.from_config(config)

    check_same_pseudonymisation(None, raw)
    check_same_pseudonymisation(None, keyed)
    check_same_pseudonymisation(keyed.pseudonym_key_id, keyed)
    with pytest.raises(InputError, match="no pseudonymisation key is configured"):
        check_same_pseudonymisation(keyed.pseudonym_key_id, raw)
    with pytest.raises(InputError, match="not the one used in training"):
        check_same_pseudonymisation("0" * 16, keyed)
