"""Temperature scaling and threshold choice, both fitted on validation predictions."""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

THRESHOLD_STRATEGIES = ("max_f1", "target_precision", "top_k_percent")


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """Temperature ``t > 0`` minimising the log loss of ``sigmoid(logits / t)``."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not np.isfinite(t) or t <= 0:
        log.warning("temperature fit failed (got %r); using 1.0", t)
        return 1.0
    return t


def choose_threshold(
    probs: np.ndarray, labels: np.ndarray, strategy: str = "max_f1", *, target_precision: float | None = None, top_k_percent: float | None = None
) -> float:
    """Pick the alert threshold on validation probabilities.

    ``max_f1`` maximises F1; ``target_precision`` takes the lowest threshold whose precision
    reaches the target (the highest-precision one when none does); ``top_k_percent`` alerts
    that share of customers.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if strategy not in THRESHOLD_STRATEGIES:
        raise ValueError(f"Expected threshold strategy in {THRESHOLD_STRATEGIES}, but got {strategy!r}")
    if strategy == "top_k_percent":
        if top_k_percent is None or not 0 < top_k_percent <= 100:
            raise ValueError(f"Expected `top_k_percent` in (0, 100], but got {top_k_percent}")
        return float(np.quantile(probs, 1 - top_k_percent / 100.0, method="higher"))
    order = np.argsort(-probs, kind="stable")
    p_sorted, y_sorted = probs[order], labels[order]
    tp = np.cumsum(y_sorted)
    k = np.arange(1, len(p_sorted) + 1)
    # Candidate cut after each distinct probability: alert everyone with p >= p_sorted[i].
    last_of_tie = np.r_[p_sorted[1:] != p_sorted[:-1], True]
    tp, k, p_cut = tp[last_of_tie], k[last_of_tie], p_sorted[last_of_tie]
    precision = tp / k
    recall = tp / max(labels.sum(), 1)
    if strategy == "max_f1":
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        return float(p_cut[int(np.argmax(f1))])
    if target_precision is None or not 0 < target_precision <= 1:
        raise ValueError(f"Expected `target_precision` in (0, 1], but got {target_precision}")
    ok = np.flatnonzero(precision >= target_precision)
    if len(ok) == 0:
        log.warning("no threshold reaches precision %.3f on validation; using the most precise one", target_precision)
        return float(p_cut[int(np.argmax(precision))])
    return float(p_cut[ok[-1]])
