"""Layers shared by the sequence encoders: event embedding, padding compaction, the head."""

from __future__ import annotations

import torch
from torch import nn


def compact_left(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the real events of every row to the front, keeping their order.

    Works for left, right or scattered padding, with only ops that export to ONNX
    (cumsum, comparison, gather), so encoders see right-padded input whatever the caller sent.

    Args:
        x: ``(B, T, D)`` event vectors.
        mask: ``(B, T)`` bool, True at real events.

    Returns:
        ``(x_compact, lengths)``: ``(B, T, D)`` with real events at ``[0, length)`` and
        ``(B,)`` int64 lengths.
    """
    T = mask.shape[1]
    counts = torch.cumsum(mask.long(), dim=1)  # (B, T) real events up to and including t
    targets = torch.arange(1, T + 1, device=mask.device).view(1, T, 1)  # (1, T, 1)
    # The j-th real event sits at the number of positions whose running count is below j + 1.
    src = (counts.unsqueeze(1) < targets).long().sum(-1)  # (B, T)
    src = src.clamp(max=T - 1)
    x_compact = torch.gather(x, 1, src.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, T, D)
    lengths = mask.long().sum(1)  # (B,)
    keep = torch.arange(T, device=mask.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    return x_compact * keep.unsqueeze(-1).to(x.dtype), lengths


class EventEmbedding(nn.Module):
    """Embed one event: its type, its item (hashed vocabulary) and its numeric features."""

    def __init__(self, n_event_types: int, n_items: int, n_numeric: int, d_model: int, item_dim: int = 16) -> None:
        super().__init__()
        self.event_type = nn.Embedding(n_event_types, d_model)
        self.item = nn.Embedding(n_items, item_dim, padding_idx=0) if n_items > 0 else None
        in_dim = n_numeric + (item_dim if self.item is not None else 0)
        self.proj = nn.Linear(in_dim, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, event_type: torch.Tensor, item: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        # event_type, item: (B, T) int64; numeric: (B, T, F) float32 -> (B, T, D)
        parts = [numeric]
        if self.item is not None:
            parts.append(self.item(item))
        h = self.proj(torch.cat(parts, dim=-1)) + self.event_type(event_type)
        return self.norm(h)


class ChurnHead(nn.Module):
    """Combine the sequence summary with the static (per-customer) features into logits.

    With ``wide=True`` a linear layer on the static features is added to the logits, beside
    the MLP (the "wide" part of a Wide & Deep model), so that a logistic
    regression on those features is part of what the model can represent from the start.
    """

    def __init__(self, d_seq: int, n_static: int, hidden: int, n_outputs: int = 1, dropout: float = 0.1, wide: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_seq + n_static, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_outputs),
        )
        self.wide = nn.Linear(n_static, n_outputs, bias=False) if wide and n_static > 0 else None

    def forward(self, summary: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        # summary: (B, D), static: (B, S) -> (B, n_outputs)
        logits = self.net(torch.cat([summary, static], dim=-1))
        if self.wide is not None:
            logits = logits + self.wide(static)
        return logits
