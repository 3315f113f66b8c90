"""Image data sources behind one contract.

A source is named by a spec ``NAME`` or ``NAME:PATH`` (split at the first colon) and
built with :func:`create_dataset` into a :class:`Dataset`: a train :class:`ImageSet`
and, where the source has one, a test :class:`ImageSet`.  Images are always
``(N, H, W, C)`` uint8 with square sides and C = 1 or 3.

Built-in sources (see ``DATASETS.names()``): ``shapes`` (procedural, with ground-truth
factors), ``digits`` (scikit-learn's 8x8 digits), ``folder:PATH`` (an image folder),
``cifar10:PATH`` and ``stl10:PATH`` (through torchvision).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from selfsup.errors import SelfSupError
from selfsup.registry import Registry


@dataclass
class ImageSet:
    """Images with labels, stable ids and (for synthetic data) ground-truth factors."""

    images: np.ndarray  # (N, H, W, C) uint8, C = 1 or 3
    labels: np.ndarray  # (N,) int64, -1 where unknown
    ids: np.ndarray  # (N,) str, stable per image
    classes: list[str]  # class names indexed by label; [] when unlabeled
    factors: np.ndarray | None = None  # (N, F) float32
    factor_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        shape, dtype = self.images.shape, self.images.dtype
        if len(shape) != 4 or shape[3] not in (1, 3) or dtype != np.uint8:
            raise ValueError(f"images must be (N, H, W, 1 or 3) uint8, got {shape} {dtype}")
        lengths = {len(self.images), len(self.labels), len(self.ids)}
        if self.factors is not None:
            lengths.add(len(self.factors))
        if len(lengths) != 1:
            raise ValueError("images, labels, ids and factors must have the same length")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_labels(self) -> bool:
        """True when every image has a label and the class names are known."""
        return bool(self.classes) and bool(np.all(self.labels >= 0))

    def subset(self, idx) -> ImageSet:
        """The rows ``idx`` (integer indices or a boolean mask) of every array."""
        idx = np.asarray(idx)
        return ImageSet(
            images=self.images[idx],
            labels=self.labels[idx],
            ids=self.ids[idx],
            classes=list(self.classes),
            factors=None if self.factors is None else self.factors[idx],
            factor_names=list(self.factor_names),
        )


@dataclass
class Dataset:
    """A named source with its train split and optional test split."""

    name: str  # the spec, e.g. "shapes" or "folder:/x"
    train: ImageSet
    test: ImageSet | None  # None when the source has no test split

    @property
    def channels(self) -> int:
        return self.train.images.shape[3]

    @property
    def image_size(self) -> int:
        """Side length; images are square."""
        return self.train.images.shape[1]


DATASETS = Registry("data source")  # entries are builder functions, see create_dataset


def create_dataset(
    spec: str,
    *,
    image_size: int | None = None,
    cache_dir: str | Path | None = None,
    strict: bool = False,
    download: bool = False,
    seed: int = 0,
    num_train: int | None = None,
    num_test: int | None = None,
) -> Dataset:
    """Build the source named by ``spec`` (``NAME`` or ``NAME:PATH``).

    ``image_size`` overrides the source's native side length; ``cache_dir`` is where
    generated data is kept; ``strict`` turns skipped unreadable files into an error;
    ``download`` lets torchvision sources fetch missing files; ``seed`` fixes generated
    data and subsampling; ``num_train``/``num_test`` cap (or, for generated data, set)
    the split sizes.
    """
    name, _, path = spec.partition(":")
    builder = DATASETS.get(name)
    sizes = {"image_size": image_size, "num_train": num_train, "num_test": num_test}
    for option, value in sizes.items():
        if value is not None and value < 1:
            raise SelfSupError(f"{option} must be a positive integer, got {value}")
    return builder(
        path or None,
        image_size=image_size,
        cache_dir=cache_dir,
        strict=strict,
        download=download,
        seed=seed,
        num_train=num_train,
        num_test=num_test,
    )


# ----------------------------------------------------------------------------------------
# Helpers shared by the source modules


def check_path(source: str, path: str | None, *, required: bool) -> None:
    """Raise a SelfSupError when a source gets a path it cannot use or lacks one it needs."""
    if required and not path:
        raise SelfSupError(f"data source {source!r} needs a path: use {source}:PATH")
    if not required and path:
        raise SelfSupError(
            f"data source {source!r} takes no path: use {source}, not {source}:{path}"
        )


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, H, W, C) uint8 square images to (N, size, size, C) with PIL bilinear."""
    if images.shape[1] == size:
        return images
    out = np.empty((len(images), size, size, images.shape[3]), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
        out[i] = np.asarray(pil.resize((size, size), Image.BILINEAR)).reshape(size, size, -1)
    return out


def random_subset(images: ImageSet, n: int | None, seed: int) -> ImageSet:
    """At most ``n`` rows chosen at random (kept in their original order); all if None."""
    if n is None or n >= len(images):
        return images
    idx = np.random.default_rng(seed).choice(len(images), size=n, replace=False)
    return images.subset(np.sort(idx))


# The source modules register themselves in DATASETS; they import the names above, so
# this import comes last.
from selfsup.data import digits, folder, shapes, torchvision_sets  # noqa: E402, F401
