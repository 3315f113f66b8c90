"""What a representation learned, measured on its embeddings (one module per concern).

Why: a kNN or linear-probe number says how well the features serve one labelled task;
these say what shape the features have -- how many directions they use, whether they
collapsed, whether views of one image land together and images spread apart, and (where
the data's generating factors are known, as in ``shapes``) which factor each feature
dimension carries.  They need no training, so they are cheap to run on any checkpoint.

Pure functions of embeddings (numpy arrays or torch tensors, rows are samples) that
return floats or small JSON-ready dicts, plus two helpers that run an encoder:
:func:`transfer` (linear probe on another dataset) and :func:`inspect` (everything at
once on one dataset).

Compactness
    :func:`effective_rank` (Roy & Vetterli 2007; RankMe, Garrido et al. 2022, arXiv
    2210.02313) and :func:`dims_for_variance`: how many directions the embeddings really
    use.
Collapse
    :func:`per_dim_std` and :func:`collapse_flag`: are all inputs mapped to (nearly) one
    point or one line?  The threshold is the training monitor's
    (:data:`selfsup.methods.base.COLLAPSE_STD`).
Alignment and uniformity (Wang & Isola 2020, arXiv 2005.10242)
    :func:`alignment` (positive pairs close, lower is better), :func:`relative_alignment`
    (the same relative to pairs of different samples, so that collapse does not score
    well) and :func:`uniformity` (points spread over the sphere, lower is better).
Disentanglement against known factors
    :func:`dci` (Eastwood & Williams, ICLR 2018) and :func:`mig` (Chen, Li, Grosse &
    Duvenaud, NeurIPS 2018, arXiv 1802.04942), both with a per-factor breakdown.

Factor kinds
    A factor is ``"categorical"`` (a class: a classification target for DCI, its values
    used as-is for MIG), ``"continuous"`` (a regression target; histogram-binned for
    MIG) or *periodic* with a period ``p`` (DCI regresses ``cos(2 pi v / p)`` and
    ``sin(2 pi v / p)``, so ``0`` and ``p`` are the same value; MIG bins it like a
    continuous factor, which mutual information does not mind).  :data:`FACTOR_KINDS`
    knows the ``shapes`` dataset's factors; other names are categorical when they take
    at most 20 distinct integer values and continuous otherwise; ``kinds=`` overrides.

    Caveats on ``shapes``: rotation is only defined up to each shape's symmetry (a
    circle has none to find, a square repeats every 90 degrees), so no code can predict
    it fully and its informativeness and MIG are capped below 1; the texture factors
    (frequency, angle, phase, contrast) are invisible on flat backgrounds
    (``texture_kind`` 0) and the background hue is barely visible at low saturation.
    The factors are sampled independently, except that object and background
    brightness are tied (their levels sit 0.4 to 0.6 apart on a circle).
"""
from __future__ import annotations

from selfsup.eval.diagnostics.arrays import as_array  # noqa: F401
from selfsup.eval.diagnostics.compactness import *  # noqa: F401,F403
from selfsup.eval.diagnostics.disentanglement import *  # noqa: F401,F403
from selfsup.eval.diagnostics.geometry import *  # noqa: F401,F403
from selfsup.eval.diagnostics.inspection import *  # noqa: F401,F403
