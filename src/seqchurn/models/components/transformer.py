"""Transformer encoder over per-customer event sequences, positioned by event time."""

from __future__ import annotations

import math

import torch
from torch import nn

from seqchurn.data.sequences import NUMERIC_FEATURES
from seqchurn.models.components.common import ChurnHead, EventEmbedding

TIME_FEATURE = NUMERIC_FEATURES.index("log_days_before_cutoff")


class ContinuousTimeEncoding(nn.Module):
    """Sinusoidal encoding of a continuous time value with learned frequencies and phases.

    The transformer's position signal: events are placed by how long before the cutoff they
    happened, not by their index, so two customers with the same events at the same times
    get the same encoding whatever their sequence length. This is the periodic part of
    Time2Vec (Kazemi et al., 2019), started at the log-spaced frequencies of the
    sinusoidal encoding in "Attention Is All You Need".
    """

    def __init__(self, d_model: int, min_frequency: float = 0.05, max_frequency: float = 20.0) -> None:
        super().__init__()
        if d_model % 2:
            raise ValueError(f"Expected an even `d_model` for sine/cosine pairs, but got {d_model}")
        freqs = torch.exp(torch.linspace(math.log(min_frequency), math.log(max_frequency), d_model // 2))
        self.frequency = nn.Parameter(freqs)
        self.phase = nn.Parameter(torch.zeros(d_model // 2))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # t: (B, T) time values (here the normalised log days before the cutoff) -> (B, T, d_model)
        angle = t.unsqueeze(-1) * self.frequency + self.phase  # (B, T, d/2)
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


class TransformerEncoder(nn.Module):
    """Embed events, add the time encoding, run self-attention, pool into churn logits.

    A learned summary token (like BERT's CLS) is prepended to every sequence and is never
    masked, so a customer with one event, or none, still has a key to attend to. The
    summary is the summary token's output next to the masked mean over real events. Padded
    positions are excluded from attention by the key padding mask and from the mean, and
    nothing depends on an event's index, so the logits do not depend on the padded length
    or the padding side.

    ``nn.TransformerEncoder`` is built with ``enable_nested_tensor=False`` so that
    inference keeps padded batches dense, as in the graph that ONNX export traces.
    """

    def __init__(
        self,
        n_event_types: int,
        n_items: int,
        n_numeric: int,
        n_static: int,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_multiplier: int = 2,
        dropout: float = 0.1,
        item_dim: int = 16,
        time_feature: int = TIME_FEATURE,
        n_outputs: int = 1,
        wide: bool = False,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"Expected `hidden_size` to be a multiple of `num_heads`, but got {hidden_size} and {num_heads}")
        if not 0 <= time_feature < n_numeric:
            raise ValueError(
                f"Expected `time_feature` to index one of the {n_numeric} numeric features, but got {time_feature}; "
                f"it must point at log_days_before_cutoff"
            )
        self.time_feature = time_feature
        self.embed = EventEmbedding(n_event_types, n_items, n_numeric, hidden_size, item_dim)
        self.time_encoding = ContinuousTimeEncoding(hidden_size)
        self.summary_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        nn.init.normal_(self.summary_token, std=0.02)
        layer = nn.TransformerEncoderLayer(
            hidden_size,
            num_heads,
            dim_feedforward=ffn_multiplier * hidden_size,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(hidden_size), enable_nested_tensor=False)
        self.head = ChurnHead(2 * hidden_size, n_static, hidden_size, n_outputs, dropout, wide=wide)

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
        h = self.embed(event_type, item, numeric) + self.time_encoding(numeric[..., self.time_feature])  # (B, T, D)
        batch = h.shape[0]
        tokens = torch.cat([self.summary_token.expand(batch, -1, -1), h], dim=1)  # (B, 1 + T, D)
        keep = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)  # (B, 1 + T)
        out = self.encoder(tokens, src_key_padding_mask=~keep)  # (B, 1 + T, D)

        events = out[:, 1:].masked_fill(~mask.unsqueeze(-1), 0.0)  # (B, T, D), zero at padding
        counts = mask.sum(1, keepdim=True).clamp(min=1).to(out.dtype)  # (B, 1)
        events_mean = events.sum(1) / counts  # (B, D)
        summary = torch.cat([out[:, 0], events_mean], dim=-1)  # (B, 2D)
        return self.head(summary, static)
