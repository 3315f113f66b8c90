"""``cifar10:PATH`` and ``stl10:PATH`` through torchvision.datasets.

Nothing is downloaded unless ``download=True``.  STL-10's labelled ``train`` and
``test`` splits are used (not ``unlabeled``).  ``image_size`` resizes (PIL bilinear);
``num_train``/``num_test`` subsample with ``seed``.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np

from selfsup.data import DATASETS, Dataset, ImageSet, check_path, random_subset, resize_images
from selfsup.errors import SelfSupError


def _find_root(path: str, folder: str) -> str:
    """Accept both the folder holding ``folder`` and ``folder`` itself."""
    root = Path(path).expanduser()
    if root.name == folder and not (root / folder).is_dir():
        return str(root.parent)
    return str(root)


def _load(title: str, folder: str, make, path: str, download: bool):
    """Call ``make(root=...)`` (a torchvision dataset class with its other arguments bound),
    turning missing or broken files into SelfSupError."""
    root = _find_root(path, folder)
    hint = f"pass --download to fetch it, or point to the folder holding {folder}"
    if not download and not os.path.isdir(os.path.join(root, folder)):
        raise SelfSupError(f"{title} not found under {path}; {hint}")
    try:
        return make(root=root)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise SelfSupError(f"{title} under {path} is incomplete or corrupted; {hint}") from err
    except OSError as err:  # failed download or unreadable files
        raise SelfSupError(f"could not load {title} under {path}: {err}") from err


def _splits(key: str, title: str, folder: str, make_split, to_nhwc, path: str | None, *, image_size,
            download: bool, seed: int, num_train, num_test) -> Dataset:
    """Both labelled splits of a torchvision set: ``make_split(split)`` returns the dataset
    class with its split argument bound; ``to_nhwc(ds)`` returns (images, labels)."""
    check_path(key, path, required=True)
    splits = {}
    for split, n in [("train", num_train), ("test", num_test)]:
        ds = _load(title, folder, make_split(split, download), path, download)
        images, labels = to_nhwc(ds)
        if image_size:
            images = resize_images(images, image_size)
        full = ImageSet(images=np.ascontiguousarray(images), labels=np.asarray(labels, dtype=np.int64),
                        ids=np.array([f"{key}/{split}/{i:05d}" for i in range(len(images))]),
                        classes=list(ds.classes))
        splits[split] = random_subset(full, n, seed)
    return Dataset(name=f"{key}:{path}", train=splits["train"], test=splits["test"])


@DATASETS.register("cifar10", help="CIFAR-10 via torchvision, 32x32 RGB, 10 classes (cifar10:PATH)")
def build_cifar10(path: str | None = None, *, image_size: int | None = None, download: bool = False,
                  seed: int = 0, num_train: int | None = None, num_test: int | None = None, **_ignored) -> Dataset:
    """CIFAR-10 from ``PATH/cifar-10-batches-py``."""
    from torchvision.datasets import CIFAR10

    return _splits("cifar10", "CIFAR-10", "cifar-10-batches-py",
                   lambda split, dl: partial(CIFAR10, train=split == "train", download=dl),
                   lambda ds: (ds.data, ds.targets),  # data is (N, 32, 32, 3) uint8 already
                   path, image_size=image_size, download=download, seed=seed, num_train=num_train,
                   num_test=num_test)


@DATASETS.register("stl10", help="STL-10 labelled splits via torchvision, 96x96 RGB, 10 classes (stl10:PATH)")
def build_stl10(path: str | None = None, *, image_size: int | None = None, download: bool = False,
                seed: int = 0, num_train: int | None = None, num_test: int | None = None, **_ignored) -> Dataset:
    """STL-10 ``train`` and ``test`` from ``PATH/stl10_binary``."""
    from torchvision.datasets import STL10

    return _splits("stl10", "STL-10", "stl10_binary",
                   lambda split, dl: partial(STL10, split=split, download=dl),
                   lambda ds: (ds.data.transpose(0, 2, 3, 1), ds.labels),  # (N, 3, 96, 96) -> NHWC
                   path, image_size=image_size, download=download, seed=seed, num_train=num_train,
                   num_test=num_test)
