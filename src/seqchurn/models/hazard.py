"""Discrete-time hazard head: P(no activity within h days) for any h, from one set of logits.

The time after a cutoff is cut into ``K`` bins of ``bin_days`` days. Output ``k`` of the head
is the logit of the hazard ``h_k = P(next activity in bin k | none before bin k)``. The
survival at the end of bin ``k`` is ``S_k = prod_{i<=k} (1 - h_i)``; inside a bin the hazard
is taken as constant, so ``S`` at any ``t`` interpolates geometrically. The loss is the
censoring-aware negative log-likelihood: a customer whose next activity fell in bin ``j``
contributes ``log h_j + sum_{k<j} log(1 - h_k)``; one observed for ``c`` days without activity
contributes ``sum_{k<floor(c / bin_days)} log(1 - h_k)``.

Survival only decreases, so the horizon probabilities are monotone in the horizon by
construction. All functions here export to ONNX (sigmoid, cumsum, exp, gather).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def hazard_targets(time_days: torch.Tensor, event: torch.Tensor, n_bins: int, bin_days: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks ``(B, K)``: bins survived, and the bin where the activity happened.

    Args:
        time_days: ``(B,)`` days from the cutoff to the next activity, or to the end of
            observation when ``event`` is 0.
        event: ``(B,)`` 1 when the next activity was observed, 0 when censored.
    """
    k = torch.arange(n_bins, device=time_days.device).unsqueeze(0)  # (1, K)
    bin_index = torch.floor(time_days / bin_days).long().unsqueeze(1)  # (B, 1)
    observed = event.bool().unsqueeze(1)
    survived = (k < bin_index).float()  # bins fully passed without activity
    happened = (observed & (k == bin_index)).float()
    return survived, happened


def hazard_nll(logits: torch.Tensor, time_days: torch.Tensor, event: torch.Tensor, bin_days: float) -> torch.Tensor:
    """Mean censoring-aware negative log-likelihood of hazard ``logits`` ``(B, K)``."""
    survived, happened = hazard_targets(time_days, event, logits.shape[1], bin_days)
    log_lik = survived * F.logsigmoid(-logits) + happened * F.logsigmoid(logits)
    return -log_lik.sum(1).mean()


def survival_at(logits: torch.Tensor, days: torch.Tensor, bin_days: float) -> torch.Tensor:
    """``S(t)`` = P(no activity within ``t`` days) for hazard ``logits`` ``(B, K)`` and ``days`` ``(H,)``.

    Returns ``(B, H)``. Horizons past the last bin use the last bin's hazard.
    """
    log_keep = F.logsigmoid(-logits)  # (B, K) log(1 - h_k)
    zero = torch.zeros_like(log_keep[:, :1])
    log_surv = torch.cat([zero, torch.cumsum(log_keep, dim=1)], dim=1)  # (B, K + 1) log S at bin edges
    n_bins = logits.shape[1]
    pos = days / bin_days  # (H,)
    whole = torch.clamp(torch.floor(pos), max=n_bins - 1).long()  # (H,)
    frac = (pos - whole.to(pos.dtype)).unsqueeze(0)  # (1, H)
    idx = whole.unsqueeze(0).expand(logits.shape[0], -1)  # (B, H)
    log_s = torch.gather(log_surv, 1, idx) + frac * torch.gather(log_keep, 1, idx)
    return torch.exp(log_s)


def expected_days(logits: torch.Tensor, bin_days: float) -> torch.Tensor:
    """Expected days to the next activity, restricted to the ``K * bin_days`` window: ``(B,)``.

    Integrates the piecewise-geometric survival curve bin by bin (exact for a hazard that
    is constant inside each bin).
    """
    h = torch.sigmoid(logits).clamp(1e-6, 1 - 1e-6)  # (B, K)
    log_keep = torch.log1p(-h)
    zero = torch.zeros_like(log_keep[:, :1])
    start = torch.exp(torch.cat([zero, torch.cumsum(log_keep, dim=1)[:, :-1]], dim=1))  # (B, K) S at each bin start
    # Inside a bin S(s) = start * (1 - h)^(s / w); its integral over the bin is start * h * w / -log(1 - h).
    area = start * h * bin_days / (-log_keep)
    return area.sum(1)
