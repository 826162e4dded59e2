"""Same seed, data and config on the CPU give the same validation metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from _tiny_data import compose_train
from seqchurn.train import train


def _train_twice(tmp_path: Path, retail_slice: Path, extra: list[str]) -> tuple[dict, dict]:
    # Separate roots give separate checkpoint folders. The second run reads the sequence
    # cache that the first one wrote, so cached and freshly built arrays are compared too.
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    first = train(compose_train(tmp_path / "a", retail_slice, [*extra, cache]))
    second = train(compose_train(tmp_path / "b", retail_slice, [*extra, cache]))
    return first, second


@pytest.mark.parametrize("model", ["gru", pytest.param("transformer", marks=pytest.mark.slow)])
def test_same_seed_same_val_metrics(tmp_path: Path, retail_slice: Path, model: str) -> None:
    first, second = _train_twice(tmp_path, retail_slice, [f"model={model}", "seed=7"])

    assert first["val_metrics"].keys() == second["val_metrics"].keys()
    for name, value in first["val_metrics"].items():
        assert second["val_metrics"][name] == pytest.approx(value, abs=1e-6, nan_ok=True), name
    assert second["temperature"] == pytest.approx(first["temperature"], abs=1e-6)
    assert second["threshold"] == pytest.approx(first["threshold"], abs=1e-6)

