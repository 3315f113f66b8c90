"""``digits``: scikit-learn's 1797 handwritten 8x8 digits (bundled, no download).

Pixel values 0..16 are scaled to 0..255.  The 80/20 train/test split is stratified by
class and fixed (it does not depend on ``seed``); ids are ``digits/NNNN`` with the index
into ``load_digits``.
"""
from __future__ import annotations

import numpy as np

from selfsup.data import DATASETS, Dataset, ImageSet, check_path, random_subset, resize_images

SPLIT_SEED = 0  # fixes the train/test split
TEST_FRACTION = 0.2


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed stratified 80/20 (train, test) split of the 1797 digits, sorted indices."""
    from sklearn.model_selection import train_test_split

    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels,
                                           random_state=SPLIT_SEED)
    return np.sort(train_idx), np.sort(test_idx)


@DATASETS.register("digits", help="scikit-learn's 1797 8x8 grayscale digits, 10 classes (built in)")
def build(
    path: str | None = None,
    *,
    image_size: int | None = None,
    seed: int = 0,
    num_train: int | None = None,
    num_test: int | None = None,
    **_ignored,
) -> Dataset:
    """The ``digits`` source; ``image_size`` resizes, ``num_*`` subsample with ``seed``."""
    from sklearn.datasets import load_digits

    check_path("digits", path, required=False)
    bunch = load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)[..., None]  # (N, 8, 8, 1)
    if image_size:
        images = resize_images(images, image_size)
    everything = ImageSet(
        images=images,
        labels=bunch.target.astype(np.int64),
        ids=np.array([f"digits/{i:04d}" for i in range(len(images))]),
        classes=[str(c) for c in bunch.target_names],
    )
    train_idx, test_idx = split_indices(bunch.target)
    return Dataset(
        name="digits",
        train=random_subset(everything.subset(train_idx), num_train, seed),
        test=random_subset(everything.subset(test_idx), num_test, seed),
    )
