"""Exponential moving average of weights, with warm-up.

A plain EMA with decay 0.999 still holds 0.999^N of its random initial weights after N updates
(37 % after 1,000 steps); the warm-up decay ``min(max_decay, (1 + n) / (10 + n))`` follows the
trained weights closely at first and reaches ``max_decay`` after about 10 / (1 - max_decay) updates.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(n_updates: int, max_decay: float, warmup: bool = True) -> float:
    """Decay of the ``n_updates``-th update (0-based)."""
    if not warmup:
        return max_decay
    return min(max_decay, (1.0 + n_updates) / (10.0 + n_updates))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for every parameter; buffers are copied."""
    e, m = list(ema.parameters()), list(model.parameters())
    torch._foreach_lerp_(e, m, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)
