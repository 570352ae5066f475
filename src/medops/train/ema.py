"""An exponential moving average (EMA) of a model's weights, updated after every optimizer step.

On the small, noisy sets medops targets the weights of one step are a poor sample of what the
run has learnt: validation AUC jumps from one epoch to the next. The average of the last epoch
or so of steps scores higher and steadier, so the trainer validates, selects and returns it.

The horizon is given in epochs (``train.ema_epochs``), not as a per-step decay, so it means the
same on 500 images and on 500 000: the decay is ``1 - 1 / (ema_epochs * steps_per_epoch)``.
Early on the decay is lowered to ``(1 + t) / (10 + t)`` at step ``t`` so the average is not
dominated by the random initialisation. Batch-norm running statistics are averaged like the
weights; integer buffers (the batch counter) are copied.
"""

from __future__ import annotations

import torch
from torch import nn


class WeightEMA:
    """The EMA of ``model``'s state; ``state`` is a dict shaped like ``model.state_dict()``."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1) (got {decay})")
        self.decay = decay
        self.updates = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._float_keys = [k for k, v in self.state.items() if v.is_floating_point()]
        self._other_keys = [k for k, v in self.state.items() if not v.is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` into the average."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = model.state_dict()
        ema = [self.state[k] for k in self._float_keys]
        torch._foreach_lerp_(ema, [current[k].detach() for k in self._float_keys], 1.0 - decay)
        for k in self._other_keys:
            self.state[k].copy_(current[k])

    def state_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "updates": self.updates, "state": self.state}

    def load_state_dict(self, saved: dict[str, object]) -> None:
        state = saved["state"]
        assert isinstance(state, dict)
        for k, v in state.items():
            self.state[k].copy_(v)
        self.updates = int(saved["updates"])  # type: ignore[call-overload]
