"""File names, tensor names and digest of an exported model, without importing torch.

``seqchurn score`` needs these but not PyTorch: importing torch and Lightning costs about
5 s and 380 MB of memory per scoring process. ``seqchurn.export`` and
``seqchurn.models.churn_module`` define the same values for the writing side;
``tests/test_score_stream.py`` checks that both sides agree.
"""

from __future__ import annotations

import hashlib
import json

MODEL_FILE, CARD_FILE = "model.onnx", "model.json"
INPUT_NAMES = ("event_type", "item", "numeric", "mask", "static")
OUTPUT_NAME = "churn_probability"


def model_digest(onnx_bytes: bytes, card: dict) -> str:
    """SHA-256 over the ONNX bytes and the canonical JSON of the card minus its digest."""
    body = {k: v for k, v in card.items() if k != "sha256"}
    h = hashlib.sha256(onnx_bytes)
    h.update(json.dumps(body, sort_keys=True, default=str).encode())
    return h.hexdigest()
