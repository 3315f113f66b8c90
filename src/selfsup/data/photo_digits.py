"""``photo_digits``: real handwriting on patches of real photographs (MNIST-M style).

Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation" (ICML 2015,
arXiv 1409.7495) built MNIST-M by blending MNIST digits into patches of colour
photographs; this source does the same from what ships with the installed packages:
scikit-learn's 1797 handwritten digits (8x8, 16 grey levels) and the colour photographs
bundled with scikit-learn (``china.jpg``, ``flower.jpg``) and matplotlib
(``grace_hopper.jpg``).  Each image is a random ``side x side`` crop of a photograph
(random scale, flip) in which the digit's strokes invert the colours underneath
(``|background - stroke|``, MNIST-M's blend), with a random size (55-85% of the side),
position and rotation (+-15 degrees); 10 classes.

The defaults are chosen on other sources: this one exists so that the methods can be
measured on data they were not fitted to (``docs/results.md`` says where a candidate was
looked at here before it was adopted).  Splits never share a handwritten digit or a
background region: the train/test split of the digits is the ``digits`` source's
(stratified 80/20, fixed), train images take their backgrounds from the top 70% of each
photograph and test images from the bottom 30%.  Each digit appears in ``VARIANTS``
images (2874 train / 720 test).  Generation is a pure function of the seed and cheap
enough to repeat at every start, so nothing is cached; ids are
``photo_digits/SPLIT/DIGIT-VARIANT``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from selfsup.data import DATASETS, Dataset, ImageSet, check_path, random_subset

VARIANTS = 2               # images per handwritten digit
DEFAULT_IMAGE_SIZE = 32
TRAIN_ROWS = 0.7           # train backgrounds from the top 70% of each photograph, test from the rest
DIGIT_SIZE = (0.55, 0.85)  # digit side as a fraction of the image side
MAX_ROTATION = 15.0        # degrees


def photographs() -> list[np.ndarray]:
    """The colour photographs that scikit-learn and matplotlib install, (H, W, 3) uint8."""
    import matplotlib
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)  # china.jpg, flower.jpg
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if hopper.is_file():
        photos.append(np.asarray(Image.open(hopper).convert("RGB")))
    return photos


def _backgrounds(photos: list[np.ndarray], n: int, side: int, split: str,
                 rng: np.random.Generator) -> np.ndarray:
    """``n`` random crops (n, side, side, 3) uint8 from the split's rows of the photographs."""
    from PIL import Image

    out = np.empty((n, side, side, 3), np.uint8)
    which = rng.integers(len(photos), size=n)
    for i in range(n):
        photo = photos[which[i]]
        cut = int(TRAIN_ROWS * photo.shape[0])
        rows = photo[:cut] if split == "train" else photo[cut:]
        # a square from `side` px up to half the region's shorter side, resized to `side` below
        crop = int(rng.integers(side, min(rows.shape[:2]) // 2 + 1))
        y = int(rng.integers(rows.shape[0] - crop + 1))
        x = int(rng.integers(rows.shape[1] - crop + 1))
        patch = Image.fromarray(rows[y:y + crop, x:x + crop]).resize((side, side), Image.BILINEAR)
        out[i] = np.asarray(patch)[:, ::-1] if rng.random() < 0.5 else np.asarray(patch)
    return out


def _strokes(digits: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """Each 8x8 digit (values 0..1) scaled, rotated and placed in a ``side`` square: (n, side, side) in [0, 1]."""
    from PIL import Image

    out = np.zeros((len(digits), side, side), np.float32)
    for i, digit in enumerate(digits):
        size = max(4, int(round(rng.uniform(*DIGIT_SIZE) * side)))
        img = Image.fromarray((digit * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        img = img.rotate(float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)), resample=Image.BILINEAR)
        y, x = (int(v) for v in rng.integers(0, side - size + 1, size=2))
        out[i, y:y + size, x:x + size] = np.asarray(img, np.float32) / 255
    return out


def render(digits: np.ndarray, photos: list[np.ndarray], side: int, split: str, seed: int) -> np.ndarray:
    """Digits (n, 8, 8) in [0, 1] blended into photograph crops: (n, side, side, 3) uint8."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    background = _backgrounds(photos, len(digits), side, split, rng).astype(np.float32)
    stroke = _strokes(digits, side, rng)[..., None] * 255  # (n, side, side, 1)
    return np.abs(background - stroke).round().astype(np.uint8)  # MNIST-M: strokes invert the colours


@DATASETS.register("photo_digits", help="handwritten digits blended into real photographs (MNIST-M style), "
                                        "32 px, 10 classes (built in; kept out of tuning)")
def build(path: str | None = None, *, image_size: int | None = None, seed: int = 0,
          num_train: int | None = None, num_test: int | None = None, **_ignored) -> Dataset:
    """The ``photo_digits`` source; ``num_*`` subsample with ``seed`` (the images themselves are
    always generated from seed 0, so every run sees the same data)."""
    from sklearn.datasets import load_digits

    from selfsup.data.digits import split_indices

    check_path("photo_digits", path, required=False)
    side = image_size or DEFAULT_IMAGE_SIZE
    bunch = load_digits()
    photos = photographs()
    splits = {}
    for split, idx in zip(("train", "test"), split_indices(bunch.target)):
        idx = np.repeat(idx, VARIANTS)  # (n * VARIANTS,) digit index of each image
        variant = np.tile(np.arange(VARIANTS), len(idx) // VARIANTS)
        images = render(bunch.images[idx] / 16.0, photos, side, split, seed=0)
        splits[split] = ImageSet(
            images=images, labels=bunch.target[idx].astype(np.int64),
            ids=np.array([f"photo_digits/{split}/{i:04d}-{v}" for i, v in zip(idx, variant)]),
            classes=[str(c) for c in bunch.target_names])
    return Dataset(name="photo_digits", train=random_subset(splits["train"], num_train, seed),
                   test=random_subset(splits["test"], num_test, seed))
