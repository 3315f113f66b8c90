"""Collapse monitoring.

A collapsed representation maps every input to (nearly) the same vector, or spans only a
few directions.  ``normalized_std`` is the per-dimension standard deviation of the
L2-normalised embeddings over the batch, averaged over dimensions and multiplied by
``sqrt(D)``: about 1 for embeddings spread evenly on the sphere, 0 for full collapse
(SimSiam's diagnostic, Chen & He 2020, arXiv 2011.10566).  Methods log it as ``z_std``;
:class:`CollapseMonitor` turns a run of low values (or DINO's teacher entropy pinned at 0
or ln K) into a warning -- a run of ``WINDOW`` logged steps, not one, because a single
batch can look narrow by chance.
"""
from __future__ import annotations

from selfsup.methods.base import COLLAPSE_STD, normalized_std  # noqa: F401  (the statistic the monitor reads)

WINDOW = 5  # logged steps in a row that must look collapsed before the monitor warns


class CollapseMonitor:
    """Feeds on the metric dicts a method logs; ``update`` returns a message once collapse
    has lasted ``WINDOW`` logged steps, else None."""

    def __init__(self, window: int = WINDOW):
        self.window = window
        self.bad = 0
        self.collapsed = False

    def check(self, logs: dict[str, float]) -> str | None:
        if "z_std" in logs and logs["z_std"] < COLLAPSE_STD:
            return f"z_std {logs['z_std']:.3f} < {COLLAPSE_STD}"
        if "teacher_entropy" in logs and "ln_k" in logs:
            h, ln_k = logs["teacher_entropy"], logs["ln_k"]
            if h < 0.05 * ln_k:
                return f"teacher entropy {h:.3f} near 0 (one-hot teacher: centering missing?)"
            if h > 0.98 * ln_k and logs.get("kl", 1.0) < 0.01:
                return f"teacher entropy {h:.3f} near ln K = {ln_k:.3f} (uniform teacher: too little sharpening)"
        return None

    def update(self, logs: dict[str, float]) -> str | None:
        reason = self.check(logs)
        self.bad = self.bad + 1 if reason else 0
        if self.bad >= self.window:
            self.collapsed = True
            return f"representation collapse suspected: {reason}"
        return None
