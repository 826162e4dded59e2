import copy
import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from seqchurn.data.schema import InputError
from seqchurn.utils.integrity import (
    ModelIntegrityError,
    canonical_json,
    fingerprint,
    model_digest,
    sha256_file,
    verify,
)

SPEC = {
    "features": ["recency_days", "orders_90d", "channel"],
    "histograms": {"recency_days": {"kind": "numeric", "edges": [3.0, 14.5, 60.0], "fractions": [0.2, 0.3, 0.3, 0.2, 0.0]}},
    "churn": {"horizon_days": 90.0, "activity_types": ["purchase"]},
    "note": "Kundenbindung",
}


@pytest.fixture
def onnx_model(tmp_path):
    node = helper.make_node("Sigmoid", ["x"], ["score"])
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 3])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), path)
    return path


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "data.bin"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)

    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_fingerprint_ignores_key_order():
    reordered = {key: SPEC[key] for key in reversed(list(SPEC))}

    assert fingerprint(reordered) == fingerprint(SPEC)


def test_fingerprint_matches_plain_json():
    text = json.dumps(SPEC, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    assert fingerprint(SPEC) == hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_fingerprint_numpy_equals_python():
    with_numpy = {"edges": np.array([1.0, 2.5]), "n": np.int64(3), "w": np.float32(0.5)}

    assert fingerprint(with_numpy) == fingerprint({"edges": [1.0, 2.5], "n": 3, "w": 0.5})


def test_canonical_json_rejects_nan_and_objects():
    with pytest.raises(ValueError, match="NaN and infinity"):
        canonical_json({"x": float("nan")})
    with pytest.raises(TypeError, match="object"):
        canonical_json({"x": object()})


def test_model_digest_recomputable(onnx_model):
    expected = hashlib.sha256(
        (hashlib.sha256(onnx_model.read_bytes()).hexdigest() + "\n" + canonical_json(SPEC)).encode("utf-8")
    ).hexdigest()

    assert model_digest(onnx_model, SPEC) == expected


def test_verify_accepts_untouched(onnx_model):
    digest = model_digest(onnx_model, SPEC)

    verify(onnx_model, copy.deepcopy(SPEC), digest)


def test_verify_detects_model_byte(onnx_model):
    digest = model_digest(onnx_model, SPEC)
    data = bytearray(onnx_model.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx_model.write_bytes(bytes(data))

    with pytest.raises(ModelIntegrityError, match="changed after export") as error:
        verify(onnx_model, SPEC, digest)

    assert isinstance(error.value, InputError)
    assert str(onnx_model) in str(error.value)
    assert "Re-export the model" in str(error.value)


@pytest.mark.parametrize(
    "edit",
    [
        lambda spec: spec["histograms"]["recency_days"]["edges"].__setitem__(1, 14.6),
        lambda spec: spec["churn"].__setitem__("horizon_days", 91.0),
        lambda spec: spec["features"].reverse(),
        lambda spec: spec.__setitem__("extra", None),
    ],
    ids=["edge", "horizon", "feature-order", "added-key"],
)
def test_verify_detects_spec_change(onnx_model, edit):
    digest = model_digest(onnx_model, SPEC)
    changed = copy.deepcopy(SPEC)
    edit(changed)

    with pytest.raises(ModelIntegrityError, match="feature spec were changed"):
        verify(onnx_model, changed, digest)


def test_verify_missing_model(tmp_path):
    with pytest.raises(ModelIntegrityError, match="model file not found"):
        verify(tmp_path / "gone.onnx", SPEC, "0" * 64)
