"""Diagnostics that run an encoder: transfer to another dataset and everything at once."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from selfsup.data import to_input
from selfsup.data.loader import Loader
from selfsup.data.python import from_array
from selfsup.data.text import TextSet
from selfsup.methods.mlm import mask_tokens
from selfsup.eval.diagnostics.compactness import collapse_flag, dims_for_variance, effective_rank, per_dim_std
from selfsup.eval.diagnostics.disentanglement import dci, mig
from selfsup.eval.diagnostics.geometry import alignment, relative_alignment, uniformity
from selfsup.models import eval_mode
from selfsup.models.runtime import choose_precision, fast_layout

ALIGNMENT_VIEW_STRENGTH = 0.5  # colour-jitter strength of the SimCLR views used by inspect

def _all(samples) -> np.ndarray:
    """Every image of a (small, subsampled) split as one array."""
    return samples.read(np.arange(len(samples)))


def fitted(samples, encoder: torch.nn.Module):
    """``samples`` as ``encoder`` takes them: images adapted by :func:`fit_images` (the
    split is small: subsampled by the caller); text as it is (already tokenised with the
    encoder's tokenizer, see :meth:`~selfsup.models.text.TextEncoder.data_options`)."""
    if isinstance(samples, TextSet):
        return samples
    return from_array(fit_images(_all(samples), encoder), samples.labels)


def alignment_views(samples) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """The augmentation alignment is measured under: SimCLR views (strength
    :data:`ALIGNMENT_VIEW_STRENGTH`, no blur at <= 32 px) for images; for text, 15% of
    the real tokens replaced by [MASK] (the corruption an MLM encoder learned to see
    through)."""
    if isinstance(samples, TextSet):
        tok = samples.tokenizer
        return lambda x, g: mask_tokens(x, g, special_ids=tok.special_ids, mask_id=tok.mask_id,
                                        vocab_size=tok.vocab_size, mask_token_frac=1.0, random_token_frac=0.0)[0]
    from selfsup.data.views import augment, for_small_images, simclr_views

    cfg = for_small_images(simclr_views(ALIGNMENT_VIEW_STRENGTH), samples.spec.image_size)
    return lambda x, g: augment(x, cfg, g)


def fit_images(images: np.ndarray, encoder: torch.nn.Module) -> np.ndarray:
    """``images`` (N, H, W, C) uint8 converted to what ``encoder`` takes: resized to its
    ``image_size`` and, when the channel counts differ, grey repeated to RGB or RGB
    turned to grey (BT.601 luma)."""
    from selfsup.data import resize_images

    spec = getattr(encoder, "kwargs", {}) or {}
    size, chans = spec.get("image_size"), spec.get("in_chans")
    if size and images.shape[1] != size:
        images = resize_images(images, size)
    c = images.shape[3]
    if chans and c != chans:
        if c == 1 and chans == 3:
            images = np.repeat(images, 3, axis=3)
        elif c == 3 and chans == 1:
            luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            images = np.round(luma)[..., None].astype(np.uint8)
        else:
            raise ValueError(f"cannot feed {c}-channel images to a {chans}-channel encoder")
    return images


def transfer(encoder: torch.nn.Module, target, *, random_encoder: torch.nn.Module | None = None,
             max_train: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Linear-probe accuracy of ``encoder``'s frozen features on another labelled dataset.

    ``target`` is a :class:`selfsup.data.Dataset` (or a spec for
    :func:`selfsup.data.create_dataset`) with labels and a test split; its images are
    adapted to the encoder (:func:`fit_images`).  The probe is
    :func:`selfsup.eval.linear.linear_probe_accuracy` (L2 chosen on a train split).  With
    ``random_encoder`` (the same architecture at random initialisation) its accuracy is
    reported too, as the baseline the transfer has to beat.
    """
    from selfsup.data import Dataset, create_dataset, random_subset
    from selfsup.eval.features import extract_features
    from selfsup.eval.linear import linear_probe_accuracy

    options = {k: v for k, v in encoder.data_options().items() if k == "text"}  # images are fitted below
    ds = target if isinstance(target, Dataset) else create_dataset(target, seed=seed, **options)
    if ds.test is None or not ds.train.has_labels or not ds.test.has_labels:
        raise ValueError(f"transfer needs a labelled dataset with a test split; {ds.name} is not")
    train = random_subset(ds.train, max_train, seed)
    ytr, yte = torch.from_numpy(train.labels), torch.from_numpy(ds.test.labels)
    c = len(ds.train.classes)

    def probe(enc: torch.nn.Module) -> float:
        ftr = extract_features(enc, fitted(train, enc))
        fte = extract_features(enc, fitted(ds.test, enc))
        return linear_probe_accuracy(ftr, ytr, fte, yte, num_classes=c, seed=seed)

    out: dict[str, Any] = {"data": ds.name, "n_train": len(train), "n_test": len(ds.test),
                           "linear_top1": probe(encoder)}
    if random_encoder is not None:
        out["random_init_linear_top1"] = probe(random_encoder)
    return out


@torch.no_grad()
def _two_view_embeddings(encoder: torch.nn.Module, samples, seed: int,
                         batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of two :func:`alignment_views` of every sample."""
    device = next(encoder.parameters()).device
    view = alignment_views(samples)
    gen = torch.Generator().manual_seed(seed)
    a, b = [], []
    fast_layout(encoder, device)
    with eval_mode(encoder), choose_precision(device).autocast():
        for _, batch in Loader(samples, batch_size, shuffle=False, drop_last=False, prefetch=False).epoch():
            x = to_input(batch, device)  # (B, C, H, W) images or (B, L) token ids
            a.append(encoder(view(x, gen)).float().cpu())
            b.append(encoder(view(x, gen)).float().cpu())
    return torch.cat(a), torch.cat(b)


def inspect(encoder: torch.nn.Module, dataset, *, max_samples: int = 5000, seed: int = 0,
            predictor: str = "linear", transfer_to=None,
            random_encoder: torch.nn.Module | None = None) -> dict[str, Any]:
    """All the diagnostics above for ``encoder``'s features on one dataset.

    Uses the test split (the train split when there is none), at most ``max_samples``
    random samples.  Alignment compares two :func:`alignment_views` of each sample;
    uniformity uses the clean samples.  With ground-truth factors (``shapes``) adds DCI
    (``predictor`` as in :func:`importance_matrix`) and MIG; with ``transfer_to`` (a
    labelled dataset or spec) adds :func:`transfer`, with ``random_encoder`` as its
    baseline.  Everything returned is JSON-ready.
    """
    from selfsup.data import Dataset, create_dataset, random_subset
    from selfsup.eval.features import extract_features

    options = {k: v for k, v in encoder.data_options().items() if k == "text"}
    ds = dataset if isinstance(dataset, Dataset) else create_dataset(dataset, seed=seed, **options)
    split = "test" if ds.test is not None else "train"
    part = random_subset(ds.test if ds.test is not None else ds.train, max_samples, seed)
    samples = fitted(part, encoder)  # at most max_samples
    h = extract_features(encoder, samples)  # (N, D)
    v1, v2 = _two_view_embeddings(encoder, samples, seed)
    spread = per_dim_std(h)
    out: dict[str, Any] = {
        "data": ds.name, "split": split, "n": len(h), "dim": int(h.shape[1]),
        "effective_rank": effective_rank(h),
        "dims_for_90pct_variance": dims_for_variance(h, 0.9),
        "per_dim_std_mean": spread["mean"], "per_dim_std_min": spread["min"],
        "z_std": spread["z_std"], "collapsed": bool(collapse_flag(h)),
        "alignment": alignment(v1, v2), "relative_alignment": relative_alignment(v1, v2, seed=seed),
        "uniformity": uniformity(h, seed=seed),
        "alignment_views": ("15% of the tokens masked" if isinstance(part, TextSet)
                            else f"simclr_views(strength={ALIGNMENT_VIEW_STRENGTH})"),
    }
    if part.factors is not None and len(part.factor_names):
        out["dci"] = dci(h, part.factors, part.factor_names, predictor=predictor, seed=seed)
        out["mig"] = mig(h, part.factors, part.factor_names)
    if transfer_to is not None:
        out["transfer"] = transfer(encoder, transfer_to, random_encoder=random_encoder, seed=seed)
    return out
