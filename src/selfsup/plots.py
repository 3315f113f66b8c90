"""Pictures of a representation (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def project_2d(feats: np.ndarray, how: str = "tsne", seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) by PCA or t-SNE (t-SNE runs on the top 50 principal components)."""
    from sklearn.decomposition import PCA

    x = feats - feats.mean(0)
    if how == "pca":
        return PCA(2, random_state=seed).fit_transform(x)
    if how == "tsne":
        from sklearn.manifold import TSNE

        x = PCA(min(50, x.shape[1], len(x)), random_state=seed).fit_transform(x)
        return TSNE(2, init="pca", perplexity=min(30.0, max(5.0, (len(x) - 1) / 3)),
                    random_state=seed).fit_transform(x)
    raise ValueError(f"unknown projection {how!r}; use pca or tsne")


def embedding_map(maps: dict[str, np.ndarray], labels: np.ndarray, classes: list[str],
                  path: str | Path, title: str = "") -> Path:
    """Scatter one or more 2-D maps side by side, coloured by class."""
    fig, axes = plt.subplots(1, len(maps), figsize=(5.2 * len(maps), 5), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for ax, (name, xy) in zip(axes[0], maps.items()):
        for c, cname in enumerate(classes):
            m = labels == c
            ax.scatter(xy[m, 0], xy[m, 1], s=4, color=cmap(c % cmap.N), label=cname, alpha=0.7)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
