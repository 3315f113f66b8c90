"""Pictures of a representation and of a run (matplotlib Agg, no display needed).

Every function draws one PNG at ``path`` and returns the path.  Images are
``(N, H, W, C)`` arrays, uint8 or float in [0, 1], with C = 1 (drawn in grey) or 3.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from selfsup.files import atomic_write, atomic_write_text  # noqa: E402

PROJECTIONS = ("pca", "tsne", "umap")  # the 2-D maps project_2d draws


def project_2d(feats: np.ndarray, how: str = "tsne", seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) by PCA, t-SNE (van der Maaten & Hinton, JMLR 2008) or UMAP (McInnes,
    Healy & Melville 2018, arXiv 1802.03426); t-SNE and UMAP run on the top 50 principal
    components, and UMAP needs the optional ``umap-learn`` package."""
    from sklearn.decomposition import PCA

    x = feats - feats.mean(0)
    if how == "pca":
        return PCA(2, random_state=seed).fit_transform(x)
    if how == "tsne":
        from sklearn.manifold import TSNE

        x = PCA(min(50, x.shape[1], len(x)), random_state=seed).fit_transform(x)
        return TSNE(2, init="pca", perplexity=min(30.0, max(5.0, (len(x) - 1) / 3)),
                    random_state=seed).fit_transform(x)
    if how == "umap":
        try:
            import umap
        except ImportError:
            raise ValueError("projection 'umap' needs the umap-learn package: "
                             "pip install umap-learn (or use pca or tsne)") from None
        x = PCA(min(50, x.shape[1], len(x)), random_state=seed).fit_transform(x)
        return umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1),
                         random_state=seed).fit_transform(x)
    raise ValueError(f"unknown projection {how!r}; use {', '.join(PROJECTIONS[:-1])} or {PROJECTIONS[-1]}")


MARK_STYLES = ({"marker": "*", "s": 110, "color": "tab:red", "edgecolors": "black", "linewidths": 0.6, "zorder": 4},
               {"marker": "X", "s": 45, "color": "black", "zorder": 3})  # marked points, in order


def embedding_map(maps: dict[str, np.ndarray], labels: np.ndarray, classes: list[str],
                  path: str | Path, title: str = "", marked: dict[str, np.ndarray] | None = None) -> Path:
    """Scatter one or more 2-D maps side by side, coloured by class (grey when there are no
    classes); ``marked`` names sets of points (indices into each map) drawn on top, the
    first as red stars, the second as black crosses."""
    fig, axes = plt.subplots(1, len(maps), figsize=(5.2 * len(maps), 5), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for ax, (name, xy) in zip(axes[0], maps.items()):
        for c, cname in enumerate(classes):
            m = labels == c
            ax.scatter(xy[m, 0], xy[m, 1], s=4, color=cmap(c % cmap.N), label=cname, alpha=0.7)
        if not classes:
            ax.scatter(xy[:, 0], xy[:, 1], s=4, color="0.65", label="pool", alpha=0.7)
        for (what, idx), style in zip((marked or {}).items(), MARK_STYLES):
            idx = np.asarray(idx, dtype=np.int64)
            ax.scatter(xy[idx, 0], xy[idx, 1], label=what, **style)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(markerscale=1 if marked else 3, fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    return _finish(fig, path, title)


def _save(fig, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format=path.suffix[1:] or "png"))
    plt.close(fig)
    return path


def _finish(fig, path: str | Path, title: str, unused_axes: Iterable = ()) -> Path:
    """Blank the panels left over in a grid, add the title, lay out tightly and save."""
    for ax in unused_axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- training curves

CURVE_SKIP = {"step", "epoch", "collapse_suspected"}  # logged keys that get no panel


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (one JSON object a line; blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def training_curves(metrics: str | Path | Iterable[dict], path: str | Path, title: str = "") -> Path:
    """Every numeric logged value against the step, one panel each: ``loss`` and ``lr``
    first, then the rest in the order they first appear (``z_std``, ``teacher_entropy``,
    ``samples_per_s``, ...).  Steps where the collapse monitor fired are marked in red.

    ``metrics`` is the path of a ``metrics.jsonl`` or its records (dicts with ``step``).
    """
    records = read_metrics(metrics) if isinstance(metrics, (str, Path)) else list(metrics)
    if not records:
        raise ValueError("no metric records to plot")
    keys: list[str] = []
    for rec in records:
        for k, v in rec.items():
            if k not in CURVE_SKIP and k not in keys and isinstance(v, (int, float)) \
                    and not isinstance(v, bool):
                keys.append(k)
    keys.sort(key=lambda k: (k != "loss", k != "lr"))  # stable: loss, lr, then the rest
    steps = np.array([rec.get("step", i) for i, rec in enumerate(records)], dtype=float)
    collapsed = steps[[bool(rec.get("collapse_suspected")) for rec in records]]
    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        xs = [s for s, rec in zip(steps, records) if isinstance(rec.get(key), (int, float))]
        ys = [rec[key] for rec in records if isinstance(rec.get(key), (int, float))]
        ax.plot(xs, ys, lw=1.2, color="tab:blue" if key != "lr" else "tab:orange")
        for s in collapsed:
            ax.axvline(s, color="tab:red", alpha=0.25, lw=1)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    return _finish(fig, path, title, list(axes.flat)[len(keys):])


# ----------------------------------------------------------------------------- maps coloured by factor


def factor_maps(xy: np.ndarray, factors: np.ndarray, factor_names: Sequence[str], path: str | Path,
                title: str = "", ncols: int = 4) -> Path:
    """The same 2-D map (N, 2) once per ground-truth factor (N, F), coloured by it.

    Categorical factors get a qualitative palette, periodic ones a cyclic colormap
    (``twilight``, so both ends of the period look alike), the rest ``viridis``; kinds
    come from :func:`selfsup.eval.diagnostics.factor_kinds`.
    """
    from selfsup.eval.diagnostics import factor_kinds

    factors = np.asarray(factors, dtype=np.float64)
    kinds = factor_kinds(factors, factor_names)
    ncols = min(ncols, len(factor_names))
    nrows = -(-len(factor_names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.2 * nrows), squeeze=False)
    for ax, name, col, kind in zip(axes.flat, factor_names, factors.T, kinds):
        if kind == "categorical":
            values = np.unique(col)
            cmap = plt.get_cmap("tab10" if len(values) <= 10 else "tab20")
            for i, value in enumerate(values):
                m = col == value
                ax.scatter(xy[m, 0], xy[m, 1], s=3, color=cmap(i % cmap.N), alpha=0.8,
                           linewidths=0, label=f"{value:g}")
            if len(values) <= 10:
                ax.legend(markerscale=3, fontsize=6, loc="center left", bbox_to_anchor=(1, 0.5),
                          handletextpad=0.1, borderpad=0.3)
        else:
            periodic = kind != "continuous"
            norm = plt.Normalize(0, float(kind)) if periodic else None
            sc = ax.scatter(xy[:, 0], xy[:, 1], s=3, c=col, cmap="twilight" if periodic else "viridis",
                            norm=norm, alpha=0.8, linewidths=0)
            fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return _finish(fig, path, title, list(axes.flat)[len(factor_names):])


# ----------------------------------------------------------------------------- image grids


def _as_display(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 or float in [0, 1] -> float (N, H, W, 3) in [0, 1] for imshow; of
    images with other than 1 or 3 channels (data bands) the first three are shown as RGB
    (the first alone, as grey, when there are two)."""
    x = np.asarray(images)
    if x.ndim == 3:  # (N, H, W): grey without a channel axis
        x = x[..., None]
    if x.ndim != 4 or x.shape[3] < 1:
        raise ValueError(f"images must be (N, H, W, C), got {x.shape}")
    if x.shape[3] not in (1, 3):
        x = x[..., :3] if x.shape[3] > 3 else x[..., :1]
    x = x.astype(np.float64) / 255 if x.dtype == np.uint8 else np.clip(x.astype(np.float64), 0, 1)
    return np.repeat(x, 3, axis=3) if x.shape[3] == 1 else x


def image_grid(rows: Sequence[np.ndarray], titles: Sequence[str] | None, path: str | Path,
               title: str = "", cell: float = 1.1) -> Path:
    """A grid with one row per array in ``rows`` (each (N, H, W, C), N may differ), the
    row's title at its left; used for MAE reconstructions, DINO attention, samples."""
    rows = [_as_display(r) for r in rows]
    titles = list(titles) if titles is not None else [""] * len(rows)
    if len(titles) != len(rows):
        raise ValueError(f"{len(titles)} titles for {len(rows)} rows")
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(cell * ncols + 1.2, cell * len(rows) + 0.3),
                             squeeze=False)
    for i, (row, name) in enumerate(zip(rows, titles)):
        for j in range(ncols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row):
                ax.imshow(row[j], interpolation="nearest")
            else:
                ax.axis("off")
        axes[i][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=1.2 / (cell * ncols + 1.2), right=0.99, top=0.9 if title else 0.98,
                        bottom=0.02, wspace=0.05, hspace=0.05)
    return _save(fig, path)


def retrieval_grid(query_images: np.ndarray, neighbour_images: np.ndarray, path: str | Path,
                   title: str = "", cell: float = 1.1) -> Path:
    """Nearest-neighbour retrieval: one row per query (N, H, W, C), the query first with a
    red frame, then its k neighbours (N, k, H, W, C) in order."""
    q = _as_display(query_images)
    nb = np.asarray(neighbour_images)
    if nb.ndim == 4:  # (N, k, H, W) grey
        nb = nb[..., None]
    if nb.ndim != 5 or len(nb) != len(q):
        raise ValueError(f"neighbours must be (N, k, H, W, C) with N = {len(q)}, got {nb.shape}")
    n, k = nb.shape[:2]
    nbd = _as_display(nb.reshape(n * k, *nb.shape[2:])).reshape(n, k, *q.shape[1:])
    head = 0.55 if title else 0.25  # inches above the grid: title and column labels
    height = cell * n + head
    fig, axes = plt.subplots(n, k + 1, figsize=(cell * (k + 1), height), squeeze=False)
    for i in range(n):
        for j in range(k + 1):
            ax = axes[i][j]
            ax.imshow(q[i] if j == 0 else nbd[i, j - 1], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                for side in ax.spines.values():
                    side.set_edgecolor("tab:red")
                    side.set_linewidth(2.5)
    axes[0][0].set_title("query", fontsize=8)
    for j in range(1, k + 1):
        axes[0][j].set_title(f"#{j}", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - head / height, bottom=0.01,
                        wspace=0.05, hspace=0.05)
    return _save(fig, path)


def upsample_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) maps -> (N, H, W), bilinear, each rescaled to [0, 1] (min to max)."""
    import torch
    import torch.nn.functional as F

    m = torch.as_tensor(np.asarray(maps, dtype=np.float32))[:, None]  # (N, 1, h, w)
    up = F.interpolate(m, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
    lo = up.min(axis=(1, 2), keepdims=True)
    span = up.max(axis=(1, 2), keepdims=True) - lo
    return (up - lo) / np.where(span > 0, span, 1.0)


def attention_overlay(images: np.ndarray, maps: np.ndarray, path: str | Path, title: str = "",
                      alpha: float = 0.55, cell: float = 1.3) -> Path:
    """Images (N, H, W, C) on the top row and the same images with their attention or
    saliency maps (N, h, w), upsampled to the image size, laid over them below."""
    x = _as_display(images)
    if len(maps) != len(x):
        raise ValueError(f"{len(maps)} maps for {len(x)} images")
    heat = plt.get_cmap("inferno")(upsample_maps(maps, x.shape[1:3]))[..., :3]  # (N, H, W, 3)
    blended = (1 - alpha) * x + alpha * heat
    n = len(x)
    head = 0.45 if title else 0.1  # inches above the grid
    height = cell * 2 + head
    fig, axes = plt.subplots(2, n, figsize=(cell * n + 1.0, height), squeeze=False)
    for j in range(n):
        for i, img in enumerate((x[j], blended[j])):
            axes[i][j].imshow(img, interpolation="nearest")
            axes[i][j].set_xticks([])
            axes[i][j].set_yticks([])
    axes[0][0].set_ylabel("image", fontsize=9)
    axes[1][0].set_ylabel("attention", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=1.0 / (cell * n + 1.0), right=0.99, top=1 - head / height,
                        bottom=0.02, wspace=0.05, hspace=0.05)
    return _save(fig, path)


def retrieval_list(queries, neighbours, path: str | Path) -> Path:
    """The text counterpart of :func:`retrieval_grid`: each query sentence and its nearest
    neighbours in the representation, as a Markdown list."""
    lines = ["# Nearest neighbours in the representation (cosine)", ""]
    for q, row in zip(queries, neighbours):
        lines += [f"**{q}**", ""] + [f"{i}. {t}" for i, t in enumerate(row, 1)] + [""]
    atomic_write_text(path, "\n".join(lines))
    return Path(path)


def label_efficiency_curves(summary: list[dict], protocols, path: str | Path) -> Path:
    """Test accuracy against the number of labels (log): a colour per protocol, and a line
    style per way of choosing the labels when the study compared several."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    selections = list(dict.fromkeys(s.get("selection", "stratified") for s in summary))
    styles = ["-", "--", ":", "-."]
    for i, p in enumerate(protocols):
        for j, sel in enumerate(selections):
            rows = [s for s in summary if s.get("selection", "stratified") == sel]
            ax.errorbar([s["labels"] for s in rows], [s[p] for s in rows], yerr=[s[p + "_std"] for s in rows],
                        marker="o", capsize=3, color=f"C{i}", linestyle=styles[j % len(styles)],
                        label=p if len(selections) == 1 else f"{p}, {sel}")
    ax.set_xscale("log")
    ax.set_xlabel("number of labels (log)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small" if len(selections) > 1 else None)
    fig.tight_layout()
    return _save(fig, path)
