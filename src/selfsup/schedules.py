"""Per-step schedules (LR, weight decay, EMA momentum, teacher temperature).

Schedules are plain arrays indexed by the global step (DINO style), so a resumed run
reads exactly the values an uninterrupted one would.  The cosine decay is SGDR's
(Loshchilov & Hutter 2016, arXiv 1608.03983) without restarts; the linear one is BERT's.

Example::

    >>> from selfsup.schedules import cosine_schedule
    >>> cosine_schedule(1.0, 0.0, total_steps=6, warmup_steps=2).round(2).tolist()
    [0.0, 1.0, 1.0, 0.75, 0.25, 0.0]
"""
from __future__ import annotations

import numpy as np

from selfsup.registry import Registry


def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """Linear warm-up from ``warmup_start`` reaching ``base`` at the last warm-up step, then
    a cosine from ``base`` to ``final`` over the remaining steps. Shape ``(total_steps,)``.

    Against the authors' schedules (each difference is one step):

    * DINO's ``cosine_scheduler`` divides by the number of cosine steps, so it stops one
      step short of ``final`` (its teacher momentum ends at 1 - 3.7e-5 for 0.996 over
      ~2.5k steps); here the last step is exactly ``final``;
    * BYOL's JAX warm-up is ``base * step / warmup_steps`` and reaches ``base`` at step
      ``warmup_steps``, one step after this one does; DINO's warm-up is this one.
    """
    warmup_steps = min(warmup_steps, total_steps)
    warm = np.linspace(warmup_start, base, warmup_steps) if warmup_steps else np.zeros(0)
    rest = total_steps - warmup_steps
    t = np.arange(rest) / max(rest - 1, 1)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t))
    return np.concatenate([warm, cos])


def linear_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0) -> np.ndarray:
    """Linear warm-up from 0 reaching ``base`` at the last warm-up step, then a straight
    line from ``base`` to ``final`` at the last step (BERT's schedule). Shape ``(total_steps,)``."""
    warmup_steps = min(warmup_steps, total_steps)
    warm = np.linspace(0.0, base, warmup_steps) if warmup_steps else np.zeros(0)
    return np.concatenate([warm, np.linspace(base, final, total_steps - warmup_steps)])


LR_SCHEDULES = Registry("optim.schedule")
LR_SCHEDULES.register("cosine", cosine_schedule, help="linear warm-up, then cosine to optim.min_lr")
LR_SCHEDULES.register("linear", linear_schedule, help="linear warm-up, then a straight line to optim.min_lr (BERT)")


def lr_schedule(kind: str, base: float, final: float, total_steps: int, warmup_steps: int = 0) -> np.ndarray:
    """The learning-rate schedule registered as ``kind`` in :data:`LR_SCHEDULES`."""
    return LR_SCHEDULES.get(kind)(base, final, total_steps, warmup_steps)
