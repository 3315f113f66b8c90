"""Self-supervised losses as plain functions.

Every loss here is a pure function of tensors: no modules, no state, no process groups.
The state a loss depends on (MoCo's queue, DINO's centre, EMA targets) lives in the
method that owns it, so a checkpoint saves it and a resumed run finds it; a loss that
kept it would lose it on resume.  Where a method needs information from other processes
(the SimCLR negatives, the DINO centre) the caller passes a ``gather`` hook; the default
is a single process.  Each docstring gives the formula, the paper it comes from and a
short example (the examples are run as doctests by ``tests/test_doctests.py``).

Contents, by family:

* contrastive: :func:`info_nce` (van den Oord et al. 2018), :func:`nt_xent` (SimCLR),
  :func:`moco_loss` (MoCo);
* bootstrapping: :func:`regression_loss`, :func:`byol_loss` (BYOL);
* self-distillation: :func:`dino_loss`, :func:`dino_center_update`,
  :func:`dino_diagnostics` and :func:`entropy` (DINO), :func:`sinkhorn_knopp` (SwAV /
  DINOv2), :func:`koleo_loss` (KoLeo, used by DINOv2);
* reconstruction: :func:`patchify` / :func:`unpatchify`, :func:`mae_loss` (MAE),
  :func:`hog_targets` (MaskFeat), :func:`reconstruction_loss` (denoising autoencoders),
  :func:`masked_lm_loss` (BERT);
* distillation from a frozen teacher: :func:`cosine_distill_loss` (feature regression,
  as in Beyer et al. 2022), :func:`seed_loss` (SEED).

Example::

    >>> import torch
    >>> from selfsup.methods.losses import nt_xent
    >>> z1, z2 = torch.randn(8, 128), torch.randn(8, 128)  # projections of two views
    >>> nt_xent(z1, z2, temperature=0.5).shape
    torch.Size([])

Conventions shared by all losses
--------------------------------
* Shapes are written in comments as ``(N, D)`` etc.; ``N`` is the local batch size.
* Every loss returns a 0-dim tensor averaged over the batch (the exact reduction of each
  loss is stated in its docstring).
* Numerics: the functions marked ``@_float32`` run with autocast disabled and upcast
  float16/bfloat16 inputs to float32, so the similarity matrices, softmaxes and
  log-softmaxes are always computed in (at least) float32.  float64 inputs stay float64,
  which the tests use for exact comparisons and ``gradcheck``.
* Stop-gradients that belong to a method (BYOL target, MoCo keys and queue, DINO
  teacher) are applied *inside* the function, so a caller cannot forget them.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import SelfSupError

# gather(t) -> (t_all, offset): all-gathers ``t`` (N, ...) from every process into
# ``t_all`` (world * N, ...), keeping gradients for the local slice, which is
# ``t_all[offset : offset + N]``.
GatherFn = Callable[[Tensor], "tuple[Tensor, int]"]

__all__ = [
    "info_nce",
    "nt_xent",
    "moco_loss",
    "regression_loss",
    "byol_loss",
    "dino_loss",
    "dino_center_update",
    "dino_diagnostics",
    "entropy",
    "mae_loss",
    "patchify",
    "unpatchify",
    "reconstruction_loss",
    "cosine_distill_loss",
    "seed_loss",
]


# --------------------------------------------------------------------------- helpers
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _upcast(x):
    """float16/bfloat16 tensors (also inside lists/tuples) -> float32; others unchanged."""
    if isinstance(x, Tensor):
        return x.float() if x.dtype in _LOW_PRECISION else x
    if isinstance(x, (list, tuple)):
        return type(x)(_upcast(v) for v in x)
    return x


def _device_types(args) -> set[str]:
    found: set[str] = set()
    for a in args:
        if isinstance(a, Tensor):
            found.add(a.device.type)
        elif isinstance(a, (list, tuple)):
            found |= _device_types(a)
    return found


def _float32(fn):
    """Run ``fn`` with autocast off and low-precision tensor arguments upcast to float32."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = tuple(_upcast(a) for a in args)
        kwargs = {k: _upcast(v) for k, v in kwargs.items()}
        with contextlib.ExitStack() as stack:
            for dev in _device_types(list(args) + list(kwargs.values())):
                available = getattr(torch.amp, "is_autocast_available", None)
                if available is not None and not available(dev):
                    continue
                stack.enter_context(torch.autocast(device_type=dev, enabled=False))
            return fn(*args, **kwargs)

    return wrapper


def _check_2d_same(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must both be (N, D) with equal shapes; "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


# --------------------------------------------------------------------- contrastive
@_float32
def info_nce(anchor: Tensor, positive: Tensor, negatives: Tensor, temperature: float = 0.5) -> Tensor:
    r"""InfoNCE with explicit negatives and cosine similarity.

    van den Oord, Li & Vinyals, "Representation Learning with Contrastive Predictive
    Coding" (2018, arXiv 1807.03748); cosine similarity and temperature as in SimCLR
    (Chen et al. 2020, arXiv 2002.05709)::

        loss_i = -log( exp(s(a_i, p_i)/T) / ( exp(s(a_i, p_i)/T) + sum_k exp(s(a_i, n_k)/T) ) )
        s(u, v) = u.v / (|u| |v|)

    The denominator holds the positive and all negatives.  Returns the mean over the
    N anchors.

    Args:
        anchor:    (N, D)
        positive:  (N, D), row i is the positive of anchor i
        negatives: (K, D) shared by all anchors, or (N, K, D) one set per anchor
        temperature: T > 0

    Example: a positive equal to the anchor and one orthogonal negative at T = 1 give
    ``-log(e / (e + 1)) = log(1 + 1/e)``::

        >>> import torch
        >>> from selfsup.methods.losses import info_nce
        >>> anchor, negative = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
        >>> round(info_nce(anchor, anchor, negative, temperature=1.0).item(), 2)
        0.31
    """
    _check_2d_same("anchor", anchor, "positive", positive)
    a = F.normalize(anchor, dim=-1)  # (N, D)
    p = F.normalize(positive, dim=-1)  # (N, D)
    n = F.normalize(negatives, dim=-1)
    pos = (a * p).sum(-1, keepdim=True)  # (N, 1)
    if n.dim() == 2:  # (K, D) shared
        neg = a @ n.t()  # (N, K)
    elif n.dim() == 3 and n.shape[0] == a.shape[0]:  # (N, K, D) per anchor
        neg = torch.einsum("nd,nkd->nk", a, n)  # (N, K)
    else:
        raise ValueError(f"negatives must be (K, D) or (N, K, D); got {tuple(negatives.shape)}")
    logits = torch.cat([pos, neg], dim=1) / temperature  # (N, 1 + K), positive at 0
    target = torch.zeros(a.shape[0], dtype=torch.long, device=a.device)
    return F.cross_entropy(logits, target)


@_float32
def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5, *, gather: Optional[GatherFn] = None) -> Tensor:
    r"""NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR.

    Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of
    Visual Representations" (ICML 2020, arXiv 2002.05709), eq. (1).  With the 2N views of a batch
    (two per image) and s the cosine similarity, for anchor i with positive j::

        l(i, j) = -log( exp(s_ij/T) / sum_{k != i} exp(s_ik/T) )

    The denominator runs over all 2N-1 other views (the positive and 2N-2 negatives);
    the self-similarity s_ii is excluded.

    Reduction: the paper's convention, the MEAN over all 2N anchors,
    ``L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]``.  (The authors' TensorFlow code
    returns the sum of the two directions' means, i.e. 2x this value.)  For identical
    embeddings every anchor's loss is ln(2N-1).

    Multi-process: ``gather(t) -> (t_all, offset)`` all-gathers a (N, D) tensor into
    (world*N, D); the local rows are ``offset .. offset+N``.  It is called once for z1
    and once for z2.  Anchors are the local 2N views; positives and negatives come
    from all 2*world*N gathered views.  The mean of the per-process losses then equals
    the single-process loss of the whole global batch.  For the exact global gradient
    the hook must be differentiable for the local slice (gradients that other
    processes' anchors send to this process's embeddings are only recovered by a
    gather whose backward all-reduces, e.g. the usual "GatherLayer").

    Args:
        z1: (N, D) projections of the first views.
        z2: (N, D) projections of the second views; row i of z1 and z2 from the same image.
        temperature: T > 0.

    Example: a batch of 4 identical embeddings gives ln(2N - 1) = ln 7::

        >>> import math
        >>> import torch
        >>> from selfsup.methods.losses import nt_xent
        >>> z = torch.ones(4, 8)
        >>> round(nt_xent(z, z).item(), 4), round(math.log(7), 4)
        (1.9459, 1.9459)
    """
    _check_2d_same("z1", z1, "z2", z2)
    n = z1.shape[0]
    if n < 1:
        raise SelfSupError("nt_xent needs a batch of at least 1 image (2 views)")
    if gather is None:
        z1_all, z2_all, offset = z1, z2, 0
    else:
        z1_all, offset = gather(z1)  # (M, D), M = world * N
        z2_all, offset2 = gather(z2)
        if offset2 != offset or z1_all.shape != z2_all.shape:
            raise ValueError("gather must return the same layout for z1 and z2")
    m = z1_all.shape[0]

    anchors = F.normalize(torch.cat([z1, z2]), dim=-1)  # (2N, D) local views
    views = F.normalize(torch.cat([z1_all, z2_all]), dim=-1)  # (2M, D) all views
    logits = anchors @ views.t() / temperature  # (2N, 2M)

    local = torch.arange(n, device=z1.device) + offset  # rows of the local slice in z*_all
    self_col = torch.cat([local, local + m])  # (2N,) column of each anchor itself
    pos_col = torch.cat([local + m, local])  # (2N,) column of its positive
    rows = torch.arange(2 * n, device=z1.device)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[rows, self_col] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(logits, pos_col)


@_float32
def moco_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    r"""MoCo contrastive loss with a queue of negative keys.

    He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised Visual
    Representation Learning" (CVPR 2020, arXiv 1911.05722), eq. (1); T = 0.2 is the MoCo
    v2 default (Chen, Fan, Girshick & He, "Improved Baselines with Momentum Contrastive
    Learning", 2020, arXiv 2003.04297)::

        logits = [q.k+, q.queue^T] / T        (positive at index 0)
        loss   = CE(logits, 0) = -log( exp(q.k+/T) / (exp(q.k+/T) + sum_j exp(q.k_j/T)) )

    q and k are L2-normalised here; the queue rows are assumed already unit vectors
    (they are normalised keys of earlier batches).  k and the queue are constants
    (stop-gradient): in MoCo they come from the momentum encoder.  Mean over the N
    queries.

    Args:
        q: (N, D) queries (online encoder).
        k: (N, D) positive keys (momentum encoder).
        queue: (K, D) negative keys.

    Example: with ``q = k`` and K negatives orthogonal to it the loss is
    ``log(1 + K exp(-1/T))``::

        >>> import math
        >>> import torch
        >>> from selfsup.methods.losses import moco_loss
        >>> q = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
        >>> queue = torch.eye(4)[1:]  # K = 3 unit keys, orthogonal to q
        >>> torch.isclose(moco_loss(q, q, queue, temperature=0.2), torch.tensor(math.log(1 + 3 * math.exp(-5))))
        tensor(True)
    """
    _check_2d_same("q", q, "k", k)
    if queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"queue must be (K, {q.shape[1]}); got {tuple(queue.shape)}")
    q = F.normalize(q, dim=-1)  # (N, D)
    k = F.normalize(k.detach(), dim=-1)  # (N, D)
    l_pos = (q * k).sum(-1, keepdim=True)  # (N, 1)
    l_neg = q @ queue.detach().to(q.dtype).t()  # (N, K)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # (N, 1 + K)
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target)


# ------------------------------------------------------------------ bootstrapping
@_float32
def regression_loss(p: Tensor, z: Tensor) -> Tensor:
    r"""BYOL's per-sample regression loss, ``2 - 2 cos(p, sg(z))``.

    Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised
    Learning" (NeurIPS 2020, arXiv 2006.07733), eq. (2)::

        L = || p/|p| - z/|z| ||^2 = 2 - 2 <p, z> / (|p| |z|)

    The target z is detached (stop-gradient).  Range [0, 4].

    Args:
        p: (N, D) online predictions.
        z: (N, D) target projections.
    Returns:
        (N,) per-sample losses.

    Example: a prediction along its target costs 0 (whatever the norms), against it 4::

        >>> import torch
        >>> from selfsup.methods.losses import regression_loss
        >>> p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
        >>> z = torch.tensor([[2.0, 0.0], [-1.0, 0.0]])
        >>> regression_loss(p, z)
        tensor([0., 4.])
    """
    _check_2d_same("p", p, "z", z)
    return 2.0 - 2.0 * F.cosine_similarity(p, z.detach(), dim=-1)


def byol_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    r"""Symmetrised BYOL loss.

    Grill et al. (NeurIPS 2020, arXiv 2006.07733), Sec. 3.1: the online
    prediction of each view regresses the target projection of the other view and the
    two directions are summed::

        L_total = mean_i [ reg(p1_i, sg(z2_i)) + reg(p2_i, sg(z1_i)) ],  reg = 2 - 2cos

    Each direction lies in [0, 4], so the total lies in [0, 8]; averaged over the batch.

    Args:
        p1: (N, D) online predictions of view 1.
        p2: (N, D) online predictions of view 2.
        z1: (N, D) target projections of view 1 (detached here).
        z2: (N, D) target projections of view 2 (detached here).

    Example::

        >>> import torch
        >>> from selfsup.methods.losses import byol_loss
        >>> p1, p2, z1, z2 = (torch.randn(8, 256) for _ in range(4))
        >>> loss = byol_loss(p1, p2, z1, z2)
        >>> loss.shape, 0 <= loss.item() <= 8
        (torch.Size([]), True)
    """
    return (regression_loss(p1, z2) + regression_loss(p2, z1)).mean()


# --------------------------------------------------------------------------- DINO
@_float32
def koleo_loss(z: Tensor, eps: float = 1e-8) -> Tensor:
    r"""Kozachenko-Leonenko entropy regulariser (KoLeo).

    Sablayrolles, Douze, Schmid & Jegou, "Spreading vectors for similarity search"
    (ICLR 2019, arXiv 1806.03198); used in DINOv2 (Oquab et al. 2023,
    arXiv 2304.07193, Sec. 4) on each batch of features::

        L = -1/N sum_i log( min_{j != i} || x_i - x_j || + eps ),   x = z / |z|

    It grows as two samples of the batch approach each other, so minimising it spreads
    the batch uniformly over the sphere: a bottleneck that maps every image to nearly one
    direction is penalised.  ``z`` (N, D), N >= 2.

    Example: two orthogonal unit vectors are sqrt(2) apart, so L = -ln sqrt(2)::

        >>> import math
        >>> import torch
        >>> from selfsup.methods.losses import koleo_loss
        >>> round(koleo_loss(torch.eye(2)).item(), 2), round(-math.log(math.sqrt(2)), 2)
        (-0.35, -0.35)
    """
    if z.dim() != 2 or len(z) < 2:
        raise ValueError(f"koleo_loss needs (N, D) with N >= 2, got shape {tuple(z.shape)}")
    x = F.normalize(z, dim=1)
    with torch.no_grad():  # the nearest neighbour of each row (DINOv2 picks it by inner product)
        sims = x @ x.T  # (N, N)
        sims.fill_diagonal_(-2.0)
        nearest = sims.argmax(dim=1)  # (N,)
    distance = (x - x[nearest]).norm(dim=1)  # (N,)
    return -torch.log(distance + eps).mean()


@torch.no_grad()
@_float32
def sinkhorn_knopp(logits: Tensor, temperature: float, iterations: int = 3, *,
                   gather: Optional[GatherFn] = None) -> Tensor:
    r"""Sinkhorn-Knopp normalisation of teacher outputs.

    From SwAV (Caron et al., "Unsupervised Learning of Visual Features by Contrasting
    Cluster Assignments", NeurIPS 2020, arXiv 2006.09882, Sec. 3.1); DINOv2 uses it in
    place of DINO's centering (Oquab et al. 2023, arXiv 2304.07193).

    ``Q = exp(logits / T)`` over the (global) batch is rescaled, alternately, so that every
    prototype receives the same total mass and every sample's row sums to one::

        repeat: Q <- Q / (K * row sums over the batch);  Q <- Q / (B * column sums)

    so no prototype can take the whole batch (no one-hot collapse) and no sample can stay
    uniform when the batch is not (no uniform collapse).  ``logits`` (N, K) -> (N, K)
    probabilities (rows sum to 1); with ``gather`` the balancing runs over every process's
    rows and each gets its own back.

    Example::

        >>> import torch
        >>> from selfsup.methods.losses import sinkhorn_knopp
        >>> q = sinkhorn_knopp(torch.randn(4, 3), temperature=0.1)
        >>> q.shape, torch.allclose(q.sum(dim=1), torch.ones(4))
        (torch.Size([4, 3]), True)
    """
    rows, offset = gather(logits) if gather is not None else (logits, 0)
    q = torch.exp((rows - rows.max()) / temperature).T  # (K, B), stabilised
    q = q / q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q = q / (q.sum(dim=1, keepdim=True) * k)  # each prototype: mass 1/K
        q = q / (q.sum(dim=0, keepdim=True) * b)  # each sample: mass 1/B
    return (q * b).T[offset:offset + len(logits)]  # (N, K), rows sum to 1


def _dino_probs(student_out, teacher_out, center, student_temp, teacher_temp):
    """Teacher probabilities (detached) and student log-probabilities, per crop."""
    if len(teacher_out) < 1 or len(student_out) < len(teacher_out):
        raise ValueError(
            "need at least one teacher crop and at least as many student crops as "
            f"teacher crops; got {len(student_out)} student, {len(teacher_out)} teacher"
        )
    center = center.detach()
    teacher_p = [F.softmax((t.detach() - center) / teacher_temp, dim=-1) for t in teacher_out]
    student_logp = [F.log_softmax(s / student_temp, dim=-1) for s in student_out]
    return student_logp, teacher_p


def _dino_pairs(n_student: int, n_teacher: int):
    return [(iq, v) for iq in range(n_teacher) for v in range(n_student) if v != iq]


@_float32
def dino_loss(
    student_out: Sequence[Tensor],
    teacher_out: Sequence[Tensor],
    center: Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    r"""DINO self-distillation cross-entropy.

    Caron et al., "Emerging Properties in Self-Supervised Vision Transformers"
    (ICCV 2021, arXiv 2104.14294), eq. (3) with centering and sharpening::

        P_t = softmax((g_t(x) - c) / T_t)        (stop-gradient)
        P_s = softmax(g_s(x') / T_s)
        L   = 1/|pairs| sum_{(iq, v), v != iq} mean_batch[ -sum_k P_t^{iq}[k] log P_s^{v}[k] ]

    The pairs are every teacher (global) crop iq against every student crop v except
    the same crop.  With 2 global and V-2 local crops there are 2(V-1) pairs.  Constant
    (uniform) student and teacher outputs give ln K.

    Args:
        student_out: list of V tensors (N, K), one per crop; the first
            ``len(teacher_out)`` entries must be the global crops, in the same order as
            ``teacher_out``.
        teacher_out: list of tensors (N, K), the teacher's outputs for the global crops
            (2 in DINO).  Detached here.
        center: (1, K) or (K,) running center of the teacher outputs.
        student_temp: T_s, the student's softmax temperature.
        teacher_temp: T_t, the teacher's (sharper) softmax temperature.

    Example: 2 global and 2 local crops with uniform outputs over K = 16 give ln 16::

        >>> import math
        >>> import torch
        >>> from selfsup.methods.losses import dino_loss
        >>> student = [torch.zeros(8, 16) for _ in range(4)]  # 2 global + 2 local crops
        >>> teacher = [torch.zeros(8, 16) for _ in range(2)]  # the 2 global crops
        >>> round(dino_loss(student, teacher, center=torch.zeros(16)).item(), 4), round(math.log(16), 4)
        (2.7726, 2.7726)
    """
    student_logp, teacher_p = _dino_probs(student_out, teacher_out, center, student_temp, teacher_temp)
    pairs = _dino_pairs(len(student_logp), len(teacher_p))
    total = 0.0
    for iq, v in pairs:
        total = total + (-(teacher_p[iq] * student_logp[v]).sum(-1)).mean()  # mean over N
    return total / len(pairs)


@torch.no_grad()
@_float32
def dino_center_update(
    center: Tensor,
    teacher_out: Sequence[Tensor],
    momentum: float = 0.9,
    *,
    gather: Optional[GatherFn] = None,
) -> Tensor:
    r"""EMA update of the DINO center.

    Caron et al. (ICCV 2021, arXiv 2104.14294), eq. (4)::

        c <- m c + (1 - m) * 1/B sum_{i=1..B} g_t(x_i)

    where the mean runs over the raw (uncentred) teacher outputs of all global crops
    of the (global) batch, B = n_global_crops * world * N.

    Args:
        center: (1, K) current center.
        teacher_out: list of (N, K) raw teacher outputs, one per global crop.
        momentum: m.
        gather: optional ``gather(t) -> (t_all, offset)`` hook (see :func:`nt_xent`);
            called once on the concatenated (n_global*N, K) teacher outputs.
    Returns:
        (1, K) new center (a new tensor, no gradient).

    Example: with m = 0.5 the centre moves half-way to the batch mean::

        >>> import torch
        >>> from selfsup.methods.losses import dino_center_update
        >>> dino_center_update(torch.zeros(1, 4), [torch.ones(2, 4)], momentum=0.5).tolist()
        [[0.5, 0.5, 0.5, 0.5]]
    """
    t = torch.cat([x.detach() for x in teacher_out], dim=0)  # (n_global*N, K)
    if gather is not None:
        t, _ = gather(t)  # (world*n_global*N, K)
    batch_center = t.mean(dim=0, keepdim=True)  # (1, K)
    return center.reshape(1, -1).to(batch_center.dtype) * momentum + batch_center * (1.0 - momentum)


def entropy(probs: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy in nats, ``-sum_k p_k log p_k`` along ``dim`` (0 log 0 = 0).

    Example: the uniform distribution over 4 outcomes has entropy ln 4::

        >>> import torch
        >>> from selfsup.methods.losses import entropy
        >>> entropy(torch.tensor([0.25, 0.25, 0.25, 0.25]))
        tensor(1.3863)
    """
    probs = _upcast(probs)
    return -torch.special.xlogy(probs, probs).sum(dim)


@torch.no_grad()
@_float32
def dino_diagnostics(
    student_out: Sequence[Tensor],
    teacher_out: Sequence[Tensor],
    center: Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> dict[str, float]:
    r"""Collapse monitors for DINO (Caron et al. 2021, arXiv 2104.14294, Sec. 5.3 / Fig. 7).

    The DINO cross-entropy splits as ``H(P_t) + KL(P_t || P_s)``.  Collapse shows as
    KL -> 0 with either ``teacher_entropy -> ln K`` (uniform collapse: too much
    centering) or ``teacher_entropy -> 0`` (one-dimension collapse: too much
    sharpening).  Healthy training keeps the KL clearly above 0 and the entropy
    between the two.

    Returns:
        ``teacher_entropy``: mean over teacher crops and batch of H(P_t) (nats);
        ``kl``: mean over the same (teacher, student) pairs as :func:`dino_loss` and
        over the batch of KL(P_t || P_s) (nats), so ``loss == teacher_entropy + kl``;
        ``ln_k``: ln K, the entropy of the uniform distribution, for comparison.

    Example: uniform outputs are the uniform collapse (entropy ln K, KL 0)::

        >>> import torch
        >>> from selfsup.methods.losses import dino_diagnostics
        >>> student = [torch.zeros(8, 16) for _ in range(4)]
        >>> teacher = [torch.zeros(8, 16) for _ in range(2)]
        >>> {k: round(v, 4) for k, v in dino_diagnostics(student, teacher, torch.zeros(16)).items()}
        {'teacher_entropy': 2.7726, 'kl': 0.0, 'ln_k': 2.7726}
    """
    student_logp, teacher_p = _dino_probs(student_out, teacher_out, center, student_temp, teacher_temp)
    pairs = _dino_pairs(len(student_logp), len(teacher_p))
    h = torch.stack([entropy(p).mean() for p in teacher_p]).mean()
    kl = torch.stack(
        [
            (torch.special.xlogy(teacher_p[iq], teacher_p[iq]) - teacher_p[iq] * student_logp[v]).sum(-1).mean()
            for iq, v in pairs
        ]
    ).mean()
    k = teacher_p[0].shape[-1]
    return {"teacher_entropy": float(h), "kl": float(kl), "ln_k": math.log(k)}


# ---------------------------------------------------------------------------- MAE
def patchify(imgs: Tensor, p: int) -> Tensor:
    """Cut images into non-overlapping p x p patches, flattened channel-last.

    (N, C, H, W) -> (N, L, p*p*C) with L = (H/p)(W/p).  Patches are numbered row-major
    over the grid (l = row * W/p + col); inside a patch the vector is ordered
    (row-in-patch, column-in-patch, channel), channel fastest, as in the authors' MAE
    code (He et al. 2021, arXiv 2111.06377), so that its targets and pictures match.

    Example::

        >>> import torch
        >>> from selfsup.methods.losses import patchify
        >>> patchify(torch.zeros(2, 3, 32, 32), 8).shape  # 4 x 4 patches of 8 * 8 * 3 values
        torch.Size([2, 16, 192])
    """
    if imgs.dim() != 4:
        raise ValueError(f"imgs must be (N, C, H, W); got {tuple(imgs.shape)}")
    n, c, hh, ww = imgs.shape
    if hh % p or ww % p:
        raise ValueError(f"image size {hh}x{ww} is not divisible by patch size {p}")
    h, w = hh // p, ww // p
    x = imgs.reshape(n, c, h, p, w, p)  # (N, C, h, p, w, q)
    x = torch.einsum("nchpwq->nhwpqc", x)  # (N, h, w, p, q, C)
    return x.reshape(n, h * w, p * p * c)


def unpatchify(x: Tensor, p: int, channels: int, *, grid: Optional[tuple[int, int]] = None) -> Tensor:
    """Exact inverse of :func:`patchify`: (N, L, p*p*C) -> (N, C, h*p, w*p).

    ``grid = (h, w)`` gives the patch grid; by default it is square (h = w = sqrt(L)).

    Example::

        >>> import torch
        >>> from selfsup.methods.losses import patchify, unpatchify
        >>> x = torch.rand(2, 3, 32, 32)
        >>> torch.equal(unpatchify(patchify(x, 8), 8, channels=3), x)
        True
    """
    n, length, dim = x.shape
    if dim != p * p * channels:
        raise ValueError(f"last dim {dim} != p*p*channels = {p * p * channels}")
    if grid is None:
        h = w = math.isqrt(length)
        if h * w != length:
            raise ValueError(f"{length} patches do not form a square grid; pass grid=(h, w)")
    else:
        h, w = grid
        if h * w != length:
            raise ValueError(f"grid {grid} does not hold {length} patches")
    x = x.reshape(n, h, w, p, p, channels)  # (N, h, w, p, q, C)
    x = torch.einsum("nhwpqc->nchpwq", x)  # (N, C, h, p, w, q)
    return x.reshape(n, channels, h * p, w * p)


@_float32
def mae_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True) -> Tensor:
    r"""Masked-autoencoder reconstruction loss on the removed patches only.

    He, Chen, Xie, Li, Dollar & Girshick, "Masked Autoencoders Are Scalable Vision
    Learners" (CVPR 2022, arXiv 2111.06377), Sec. 3::

        t~      = (t - mean(t)) / sqrt(var(t) + 1e-6)    per patch, if norm_pix
                  (var is the UNBIASED variance over the patch's p*p*C values)
        e_l     = mean_d (pred_l[d] - t~_l[d])^2          per-patch MSE
        L       = sum_l e_l m_l / sum_l m_l              m_l = 1: patch removed

    Visible patches (m = 0) contribute nothing, neither value nor gradient.

    Args:
        pred:   (N, L, p*p*C) decoder output.
        target: (N, L, p*p*C) patchified images (see :func:`patchify`).
        mask:   (N, L), 1 (or True) where the patch was removed, 0 where visible.
        norm_pix: normalise each target patch as above.

    Example: only the removed patches count (here every removed patch is off by 1)::

        >>> import torch
        >>> from selfsup.methods.losses import mae_loss
        >>> pred, target = torch.zeros(2, 4, 12), torch.ones(2, 4, 12)  # N=2, L=4, p*p*C=12
        >>> mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]])
        >>> mae_loss(pred, target, mask, norm_pix=False)
        tensor(1.)
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be (N, L, D); got {tuple(pred.shape)}, {tuple(target.shape)}")
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"mask must be (N, L) = {tuple(pred.shape[:2])}; got {tuple(mask.shape)}")
    target = target.detach()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)  # (N, L, 1)
        var = target.var(dim=-1, unbiased=True, keepdim=True)  # (N, L, 1)
        target = (target - mean) / (var + 1.0e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # (N, L)
    mask = mask.to(per_patch.dtype)
    # clamp: an all-visible mask gives 0 instead of 0/0
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def hog_targets(imgs: Tensor, p: int, bins: int = 9, eps: float = 0.05) -> Tensor:
    r"""Per-patch histograms of oriented gradients, MaskFeat's target.

    Wei, Fan, Xie, Wu, Yuille & Feichtenhofer, "Masked Feature Prediction for
    Self-Supervised Visual Pre-Training" (CVPR 2022, arXiv 2112.09133): predicting HOG
    of the removed patches instead of their pixels.

    (N, C, H, W) in [0, 1] -> (N, L, bins), one histogram per p x p patch in
    :func:`patchify`'s order.  Following Dalal & Triggs (2005): centred [-1, 0, 1]
    differences (edges replicated), at each pixel the gradient of the channel with the
    largest magnitude; unsigned orientations in [0, pi) vote their magnitude into
    ``bins`` bins, split linearly between the two nearest bin centres; each patch's
    histogram is L2-normalised, ``h / sqrt(|h|^2 + (eps p^2)^2)``, so the target does
    not depend on colour or contrast, and flat patches stay near zero.

    Example::

        >>> import torch
        >>> from selfsup.methods.losses import hog_targets
        >>> hog_targets(torch.rand(2, 3, 16, 16), 8).shape  # 2 x 2 patches, 9 bins each
        torch.Size([2, 4, 9])
        >>> hog_targets(torch.full((1, 3, 16, 16), 0.5), 8).abs().max()  # a flat image
        tensor(0.)
    """
    n, c, hh, ww = imgs.shape
    x = F.pad(imgs.float(), (1, 1, 1, 1), mode="replicate")
    gx = x[..., 1:-1, 2:] - x[..., 1:-1, :-2]  # (N, C, H, W)
    gy = x[..., 2:, 1:-1] - x[..., :-2, 1:-1]
    mag = torch.sqrt(gx ** 2 + gy ** 2)
    best = mag.argmax(dim=1, keepdim=True)  # (N, 1, H, W)
    gx, gy, mag = gx.gather(1, best), gy.gather(1, best), mag.gather(1, best)
    pos = torch.remainder(torch.atan2(gy, gx), math.pi) * (bins / math.pi) - 0.5  # bin centres at k + 0.5
    lo = torch.floor(pos)
    frac = pos - lo
    lo = torch.remainder(lo, bins).long()
    hist = torch.zeros(n, bins, hh, ww, device=imgs.device)
    hist.scatter_add_(1, lo, mag * (1 - frac))
    hist.scatter_add_(1, torch.remainder(lo + 1, bins), mag * frac)
    cells = F.avg_pool2d(hist, p) * (p * p)  # (N, bins, H/p, W/p): sums over each patch
    cells = cells.flatten(2).transpose(1, 2)  # (N, L, bins)
    return cells / torch.sqrt((cells ** 2).sum(-1, keepdim=True) + (eps * p * p) ** 2)


# -------------------------------------------------------------------- autoencoders
_RECON_KINDS = ("mse", "bce")


@_float32
def reconstruction_loss(recon: Tensor, clean: Tensor, kind: str = "mse", *, logits: bool = False) -> Tensor:
    r"""Reconstruction loss of a (denoising) autoencoder, measured against the CLEAN input.

    Vincent, Larochelle, Bengio & Manzagol, "Extracting and Composing Robust Features
    with Denoising Autoencoders" (ICML 2008), Sec. 2: the decoder output z of the
    corrupted input is compared with the uncorrupted x.

    ``kind="mse"``: squared error, mean over ALL components (over the batch and the
    features), ``L = 1/(N D) sum_{i,k} (z_ik - x_ik)^2``.

    ``kind="bce"``: the paper's reconstruction cross-entropy for x in [0, 1],
    summed over the components of an example and averaged over the batch::

        L_H(x, z) = -sum_k [ x_k log z_k + (1 - x_k) log(1 - z_k) ]
        L = 1/N sum_i L_H(x_i, z_i)

    (note the different scale from "mse": a sum, not a mean, over components).
    With ``logits=True`` ``recon`` holds pre-sigmoid logits and the numerically stable
    ``binary_cross_entropy_with_logits`` is used; otherwise ``recon`` holds
    probabilities, clamped to [1e-7, 1 - 1e-7] before the log.  ``logits`` is only
    meaningful for "bce" (for "mse" a sigmoid is applied first).

    Args:
        recon: (N, ...) reconstruction (probabilities or logits).
        clean: (N, ...) clean input, same shape.

    Example::

        >>> import torch
        >>> from selfsup.methods.losses import reconstruction_loss
        >>> recon, clean = torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]])
        >>> reconstruction_loss(recon, clean).item()  # mean of 0.5^2 and 0.5^2
        0.25
        >>> reconstruction_loss(recon, clean, "bce")  # ln 2 + ln 2, summed over components
        tensor(1.3863)
    """
    if kind not in _RECON_KINDS:
        raise SelfSupError(f"unknown reconstruction loss {kind!r}; valid kinds: {', '.join(_RECON_KINDS)}")
    if recon.shape != clean.shape:
        raise ValueError(f"recon {tuple(recon.shape)} and clean {tuple(clean.shape)} differ in shape")
    clean = clean.detach().to(recon.dtype)
    if kind == "mse":
        z = torch.sigmoid(recon) if logits else recon
        return F.mse_loss(z, clean, reduction="mean")
    if logits:
        per_elem = F.binary_cross_entropy_with_logits(recon, clean, reduction="none")
    else:
        eps = 1.0e-7
        z = recon.clamp(eps, 1.0 - eps)
        per_elem = -(clean * torch.log(z) + (1.0 - clean) * torch.log1p(-z))
    return per_elem.flatten(1).sum(dim=1).mean()  # per-example sum, batch mean


IGNORE_INDEX = -100  # label of the positions a masked language model is not scored on


@_float32
def masked_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    r"""BERT's masked language modelling loss.

    Devlin, Chang, Lee & Toutanova, "BERT: Pre-training of Deep Bidirectional
    Transformers for Language Understanding" (NAACL 2019, arXiv 1810.04805), Sec. 3.1.

    Cross-entropy of the predicted distribution over the vocabulary against the original
    token, averaged over the selected positions only::

        L = -1/|M| sum_{i in M} log softmax(logits_i)[labels_i],   M = {i : labels_i != -100}

    With uniform logits L = ln V.  Positions labelled -100 (:data:`IGNORE_INDEX`) are
    ignored, as in ``transformers.BertForMaskedLM``; when none is selected the loss is 0
    (with a gradient of 0), not NaN.

    Args:
        logits: (..., V) scores over the vocabulary.
        labels: (...) original token ids at the selected positions, -100 elsewhere.

    Example: uniform logits over V = 10 tokens give ln 10, whatever is selected::

        >>> import torch
        >>> from selfsup.methods.losses import masked_lm_loss
        >>> labels = torch.tensor([[-100, 3, -100, 7]])  # positions 1 and 3 were selected
        >>> masked_lm_loss(torch.zeros(1, 4, 10), labels)
        tensor(2.3026)
    """
    logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)  # (M, V), (M,)
    if not bool((labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


# --------------------------------------------------------------------- distillation
@_float32
def cosine_distill_loss(s: Tensor, t: Tensor) -> Tensor:
    r"""Cosine regression of the student's prediction onto the teacher's embedding.

    ``s`` is the student's head output for a view, ``t`` the frozen teacher's embedding of
    the *same* view (consistent teaching: Beyer et al., "Knowledge distillation: A good
    teacher is patient and consistent", CVPR 2022, arXiv 2106.05237)::

        L = mean_i [ 1 - cos(s_i, sg(t_i)) ]

    The teacher's embedding is detached here.  Range [0, 2]; the norms do not matter.

    Args:
        s: (N, D) student predictions (the student head maps its features to the teacher's D).
        t: (N, D) teacher embeddings.

    Example: along the target costs 0, orthogonal 1, opposite 2::

        >>> import torch
        >>> from selfsup.methods.losses import cosine_distill_loss
        >>> t = torch.tensor([[1.0, 0.0]])
        >>> [cosine_distill_loss(torch.tensor([[x, y]]), t).item() for x, y in ((3, 0), (0, 1), (-1, 0))]
        [0.0, 1.0, 2.0]
    """
    _check_2d_same("s", s, "t", t)
    return (1.0 - F.cosine_similarity(s, t.detach(), dim=-1)).mean()


@_float32
def seed_loss(s: Tensor, t: Tensor, queue: Tensor, student_temp: float = 0.2, teacher_temp: float = 0.01) -> Tensor:
    r"""SEED's relational distillation loss.

    Fang et al., "SEED: Self-supervised Distillation For Visual Representation" (ICLR
    2021, arXiv 2101.04731), eq. (1)-(3).  With unit vectors ``z^S = s/|s|``, ``z^T =
    t/|t|`` and a queue ``D = [z^T_i; d_1 .. d_K]`` of teacher embeddings whose first
    entry is the teacher's own embedding of that image::

        p^T_ij = softmax_j( <z^T_i, D_j> / tau_T )
        p^S_ij = softmax_j( <z^S_i, D_j> / tau_S )
        L = mean_i [ - sum_j p^T_ij log p^S_ij ]

    The student's similarity distribution over the teacher's embeddings matches the
    teacher's (cross-entropy with the teacher's distribution as target).  The teacher's
    side (``t``, ``queue``) is detached here; the queue's rows are used as given
    (the caller keeps them unit vectors).

    Args:
        s: (N, D) student embeddings (head outputs), any norm.
        t: (N, D) teacher embeddings of the same views, any norm.
        queue: (K, D) earlier teacher embeddings, unit vectors.
        student_temp: tau_S (0.2 in the paper).
        teacher_temp: tau_T (0.01 in the paper: a sharp target).

    Example: a student that is the teacher reaches the target distribution's entropy, the
    loss's minimum::

        >>> import torch
        >>> from selfsup.methods.losses import seed_loss
        >>> t = torch.randn(4, 8)
        >>> queue = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
        >>> seed_loss(t, t, queue, 0.1, 0.1) <= seed_loss(torch.randn(4, 8), t, queue, 0.1, 0.1)
        tensor(True)
    """
    _check_2d_same("s", s, "t", t)
    zs, zt = F.normalize(s, dim=1), F.normalize(t.detach(), dim=1)  # (N, D)
    q = queue.detach().to(zt.dtype)  # (K, D)
    logits_s = torch.cat([(zs * zt).sum(1, keepdim=True), zs @ q.t()], dim=1) / student_temp  # (N, 1 + K)
    logits_t = torch.cat([(zt * zt).sum(1, keepdim=True), zt @ q.t()], dim=1) / teacher_temp  # (N, 1 + K)
    return -(F.softmax(logits_t, dim=1) * F.log_softmax(logits_s, dim=1)).sum(1).mean()
