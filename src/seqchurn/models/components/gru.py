"""GRU encoder over per-customer event sequences."""

from __future__ import annotations

import torch
from torch import nn

from seqchurn.models.components.common import ChurnHead, EventEmbedding, compact_left


class GRUEncoder(nn.Module):
    """Embed events, run a GRU, read the state after each customer's last real event.

    Padding is removed by :func:`compact_left` instead of ``pack_padded_sequence`` (which
    does not survive ONNX export): a GRU is causal, so once real events sit at the front,
    the output at ``length - 1`` does not depend on how much padding follows.
    """

    def __init__(
        self,
        n_event_types: int,
        n_items: int,
        n_numeric: int,
        n_static: int,
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.1,
        item_dim: int = 16,
        n_outputs: int = 1,
        wide: bool = False,
    ) -> None:
        super().__init__()
        self.embed = EventEmbedding(n_event_types, n_items, n_numeric, hidden_size, item_dim)
        self.gru = nn.GRU(hidden_size, hidden_size, num_layers=num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.head = ChurnHead(hidden_size, n_static, hidden_size, n_outputs, dropout, wide=wide)

    def forward(
        self, event_type: torch.Tensor, item: torch.Tensor, numeric: torch.Tensor, mask: torch.Tensor, static: torch.Tensor
    ) -> torch.Tensor:
        """Return churn logits ``(B, n_outputs)``.

        Args:
            event_type: ``(B, T)`` int64 event-type ids.
            item: ``(B, T)`` int64 item ids (0 = padding, 1 = unknown).
            numeric: ``(B, T, F)`` float32 normalised event features.
            mask: ``(B, T)`` bool, True at real events (any padding side).
            static: ``(B, S)`` float32 normalised per-customer features.
        """
        h = self.embed(event_type, item, numeric)  # (B, T, D)
        h, lengths = compact_left(h, mask)  # (B, T, D), (B,)
        out, _ = self.gru(h)  # (B, T, D)
        last = (lengths - 1).clamp(min=0)  # (B,)
        summary = torch.gather(out, 1, last.view(-1, 1, 1).expand(-1, 1, out.shape[-1])).squeeze(1)  # (B, D)
        return self.head(summary, static)
