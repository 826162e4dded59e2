"""GRU encoder: the probability must not depend on padding or batch order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from seqchurn.data.sequences import SequenceArrays
from seqchurn.export import ScoringModel, check_parity, export_onnx, pad_to
from seqchurn.models.components.common import ChurnHead, compact_left
from seqchurn.models.components.gru import GRUEncoder

N_TYPES, N_ITEMS, F, S = 6, 20, 8, 10


def random_arrays(n: int, T: int, seed: int = 0) -> SequenceArrays:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, size=n)
    lengths[0] = 1  # a customer with a single event
    mask = np.arange(T)[None, :] < lengths[:, None]
    return SequenceArrays(
        event_type=np.where(mask, rng.integers(0, N_TYPES, (n, T)), 0).astype(np.int64),
        item=np.where(mask, rng.integers(1, N_ITEMS, (n, T)), 0).astype(np.int64),
        numeric=np.where(mask[..., None], rng.normal(size=(n, T, F)), 0).astype(np.float32),
        mask=mask,
        static=rng.normal(size=(n, S)).astype(np.float32),
    )


def prob(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.as_tensor(inputs[k]) for k in ("event_type", "item", "numeric", "mask", "static"))).numpy()


def make_model(seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ScoringModel(GRUEncoder(N_TYPES, N_ITEMS, F, S, hidden_size=16, **kwargs)).eval()


def test_compact_left_moves_real_events_first():
    x = torch.arange(1, 7, dtype=torch.float32).view(1, 6, 1)
    mask = torch.tensor([[False, True, False, True, True, False]])
    out, lengths = compact_left(x, mask)
    assert out.view(-1).tolist() == [2.0, 4.0, 5.0, 0.0, 0.0, 0.0]
    assert lengths.tolist() == [3]


def test_gru_invariant_to_padding_length_side_and_order():
    model = make_model()
    arrays = random_arrays(12, 7)
    base = prob(model, pad_to(arrays, 7))
    longer = prob(model, pad_to(arrays, 19))
    left = prob(model, pad_to(arrays, 11, left=np.ones(12, bool)))
    mixed = prob(model, pad_to(arrays, 9, left=np.arange(12) % 2 == 0))
    perm = np.random.default_rng(1).permutation(12)
    shuffled = prob(model, pad_to(arrays.take(perm), 7))
    single = np.array([prob(model, pad_to(arrays.take(np.array([i])), 7))[0] for i in range(12)])
    for other in (longer, left, mixed, shuffled[np.argsort(perm)], single):
        np.testing.assert_allclose(other, base, atol=1e-6, rtol=0)
    assert np.all((base > 0) & (base < 1))


def test_gru_padding_does_change_result_without_compaction():
    """Control: the invariance above comes from compact_left (a plain GRU over left padding differs)."""
    model = make_model()
    arrays = random_arrays(6, 5)
    left = pad_to(arrays, 12, left=np.ones(6, bool))
    net = model.net
    with torch.no_grad():
        h = net.embed(*(torch.as_tensor(left[k]) for k in ("event_type", "item", "numeric")))
        out, _ = net.gru(h)
        naive = torch.sigmoid(net.head(out[:, -1], torch.as_tensor(left["static"]))[:, 0]).numpy()
    assert np.max(np.abs(naive - prob(model, pad_to(arrays, 5)))) > 1e-4


def test_wide_head_adds_linear_static_term():
    torch.manual_seed(0)
    head = ChurnHead(d_seq=4, n_static=3, hidden=8, n_outputs=1, wide=True).eval()
    summary, static = torch.randn(5, 4), torch.randn(5, 3)
    with torch.no_grad():
        deep_only = head.net(torch.cat([summary, static], dim=-1))
        expected = deep_only + static @ head.wide.weight.T
        got = head(summary, static)
    torch.testing.assert_close(got, expected)
    assert head.wide.weight.shape == (1, 3)
    assert float(torch.max(torch.abs(got - deep_only))) > 1e-3


def test_wide_head_off_or_without_static():
    assert ChurnHead(4, 3, 8).wide is None
    assert ChurnHead(4, 0, 8, wide=True).wide is None


def test_wide_gru_invariant_to_padding():
    model = make_model(wide=True)
    arrays = random_arrays(8, 6)
    base = prob(model, pad_to(arrays, 6))
    mixed = prob(model, pad_to(arrays, 13, left=np.arange(8) % 2 == 0))
    np.testing.assert_allclose(mixed, base, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_wide_gru_onnx_export_parity(tmp_path: Path):
    model = make_model(seed=3, wide=True)
    arrays = random_arrays(40, 9)
    path = tmp_path / "model.onnx"
    export_onnx(model, pad_to(arrays.take(np.arange(4)), 9), path)
    assert check_parity(model, path, arrays, tolerance=1e-4) <= 1e-4
