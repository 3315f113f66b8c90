"""Bring your own data from Python: numpy arrays, torch and Hugging Face Datasets.

:func:`as_dataset` turns what a user has into a :class:`~selfsup.data.Dataset`:

* a spec string (``"shapes"``, ``"folder:PATH"``, ``"hf:PATH"``): :func:`create_dataset`;
* a numpy array ``(N, H, W, C)`` or ``(N, H, W)`` of uint8 (or floats in [0, 1]), or a
  pair ``(images, labels)``;
* a map-style ``torch.utils.data.Dataset`` whose items are a PIL image, a tensor
  ``(C, H, W)`` or an ``(image, label)`` pair;
* a Hugging Face ``datasets.Dataset`` with an image column (``image`` or ``img``, or the
  first column of the ``Image`` feature) and a label column when present (``label`` or
  ``labels``), or a ``DatasetDict`` (its ``train`` and ``test``/``validation`` splits);
* text: a list of strings, a pair ``(texts, labels)``, or a Hugging Face ``Dataset``
  with a text column (``text`` unless ``TextOptions.text_column`` says otherwise);
* ``{"train": ..., "test": ...}`` of any of these.

Datasets are read lazily: each batch converts its own items (centre square crop, resize
to ``image_size`` with PIL bilinear, 8-bit), so nothing is decoded ahead and memory does
not grow with the dataset.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from selfsup.data import Dataset, ImageSet, SampleSet, Store, create_dataset
from selfsup.data.text import RawText, TextOptions, labelled, relabel, text_dataset
from selfsup.errors import SelfSupError

DEFAULT_IMAGE_SIZE = 64  # for datasets whose first image is not square


class IndexIds(Store):
    """Ids ``PREFIX000000``, ``PREFIX000001``, ... computed on demand."""

    dtype = np.dtype(object)

    def __init__(self, prefix: str, n: int):
        self.prefix, self.shape = prefix, (n,)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return np.array([f"{self.prefix}{i:06d}" for i in idx])


def _to_pil(item: Any) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
        if item.ndim == 3 and item.shape[0] in (1, 3) and item.shape[2] not in (1, 3):
            item = item.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if isinstance(item, np.ndarray):
        arr = item
        if arr.dtype != np.uint8:
            arr = np.clip(np.round(arr.astype(np.float32) * 255), 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3):
            raise SelfSupError(f"an image must be (H, W), (H, W, C) or (C, H, W); got shape {item.shape}")
        return Image.fromarray(arr)
    raise SelfSupError(f"cannot use a {type(item).__name__} as an image; give PIL images, tensors or arrays")


def fit_image(item: Any, size: int, channels: int) -> np.ndarray:
    """One image -> (size, size, channels) uint8: centre square crop, PIL bilinear resize."""
    from selfsup.data.folder import square, to_rgb

    img = _to_pil(item)
    img = img.convert("L") if channels == 1 else to_rgb(img)
    return np.asarray(square(img, size)).reshape(size, size, channels)


class DatasetImages(Store):
    """The images of a map-style dataset as a store: ``store[idx]`` fetches and converts
    those items only (:func:`fit_image`)."""

    def __init__(self, fetch: Callable[[list[int]], list[Any]], n: int, size: int, channels: int):
        self.fetch, self.size, self.channels = fetch, size, channels
        self.shape = (n, size, size, channels)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), self.size, self.size, self.channels), dtype=np.uint8)
        for row, item in enumerate(self.fetch([int(i) for i in idx])):
            out[row] = fit_image(item, self.size, self.channels)
        return out


def as_samples(data) -> SampleSet:
    """A :class:`~selfsup.data.SampleSet` (images or text) as is; an image array wrapped
    as an ImageSet."""
    return data if isinstance(data, SampleSet) else from_array(data)


def _first_image_shape(item: Any) -> tuple[int, int]:
    """(side, channels) of a dataset's first image, for the defaults."""
    img = _to_pil(item)
    channels = 1 if img.mode in ("L", "1", "I;16", "I", "F") else 3
    w, h = img.size
    return (w if w == h else DEFAULT_IMAGE_SIZE), channels


def _image_set(fetch, n: int, labels: np.ndarray, classes: list[str], prefix: str,
               image_size: int | None) -> ImageSet:
    if n == 0:
        raise SelfSupError("the dataset is empty")
    side, channels = _first_image_shape(fetch([0])[0])
    store = DatasetImages(fetch, n, image_size or side, channels)
    return ImageSet(images=store, labels=labels, ids=IndexIds(prefix, n), classes=classes)


def from_array(images: np.ndarray, labels=None, *, image_size: int | None = None, name: str = "array") -> ImageSet:
    """An in-memory split from ``(N, H, W[, C])`` uint8 or [0, 1] float images."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim == 4 and x.shape[1] != x.shape[2] and x.shape[2] == x.shape[3]:
        x = x.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C); square images tell them apart
    if x.ndim != 4 or x.shape[1] != x.shape[2]:
        raise SelfSupError(f"images must be (N, H, W, C) with square sides (C = 1 grey, 3 RGB or any count of "
                           f"bands); got shape {x.shape}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating):
            raise SelfSupError(f"images must be uint8 or floats in [0, 1]; got {x.dtype}")
        x = np.clip(np.round(x * 255), 0, 255).astype(np.uint8)
    if image_size and image_size != x.shape[1]:
        from selfsup.data import resize_images

        x = resize_images(x, image_size)
    y = np.full(len(x), -1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(y) != len(x):
        raise SelfSupError(f"{len(y)} labels for {len(x)} images")
    classes = [str(c) for c in range(int(y.max()) + 1)] if labels is not None and len(y) else []
    return ImageSet(images=np.ascontiguousarray(x), labels=y, ids=IndexIds(f"{name}/", len(x)), classes=classes)


def from_torch(ds: torch.utils.data.Dataset, *, image_size: int | None = None, name: str = "torch") -> ImageSet:
    """A split reading a map-style torch Dataset lazily (labels from ``targets`` when it
    has them, else one pass over the items)."""
    try:
        n = len(ds)
    except TypeError:
        raise SelfSupError("the torch Dataset has no len(): selfsup needs a map-style Dataset") from None

    def item(i: int):
        x = ds[i]
        return x[0] if isinstance(x, (tuple, list)) else x

    first = ds[0] if n else None
    labelled = isinstance(first, (tuple, list)) and len(first) > 1
    labels = np.full(n, -1, dtype=np.int64)
    targets = getattr(ds, "targets", None)
    if labelled and targets is not None and len(targets) == n:
        labels = np.asarray([int(t) for t in targets], dtype=np.int64)
    elif labelled:
        labels = np.asarray([int(ds[i][1]) for i in range(n)], dtype=np.int64)
    classes = []
    if labelled:
        classes = [str(c) for c in getattr(ds, "classes", None) or range(int(labels.max()) + 1)]
    return _image_set(lambda idx: [item(i) for i in idx], n, labels, classes, f"{name}/", image_size)


def _hf_columns(ds, text: TextOptions) -> tuple[str | None, str | None, str | None]:
    """(image column, text column, label column) of a Hugging Face dataset."""
    import datasets

    feats = ds.features
    image = next((c for c in ("image", "img") if c in feats), None)
    image = image or next((c for c, f in feats.items() if isinstance(f, datasets.Image)), None)
    words = text.text_column if image is None and text.text_column in feats else None
    if image is None and words is None:
        raise SelfSupError(f"the Hugging Face dataset has no image column and no text column {text.text_column!r} "
                           f"(columns: {', '.join(feats)}); name the image column 'image', or the text column "
                           "with --text-column")
    names = (text.label_column, "label", "labels") if words else ("label", "labels")
    label = next((c for c in names if c in feats), None)
    return image, words, label


def from_hf(ds, *, image_size: int | None = None, name: str = "hf", text: TextOptions | None = None):
    """A split of a Hugging Face ``datasets.Dataset``: an ImageSet reading the images
    lazily, or the RawText of its text column."""
    image, words, label = _hf_columns(ds, text or TextOptions())
    n = len(ds)
    labels, classes = np.full(n, -1, dtype=np.int64), []
    if label is not None:
        names = getattr(ds.features[label], "names", None)
        if words and not names:  # text labels may be strings
            return labelled([str(t) for t in ds[words]], list(ds[label]), [f"{name}/{i:06d}" for i in range(n)])
        labels = np.asarray(ds[label], dtype=np.int64)
        classes = list(names) if names else [str(c) for c in range(int(labels.max()) + 1)] if n else []
    if words:
        return RawText([str(t) for t in ds[words]], labels, np.array([f"{name}/{i:06d}" for i in range(n)],
                                                                      dtype=object), classes)
    return _image_set(lambda idx: ds[idx][image], n, labels, classes, f"{name}/", image_size)


def _is_texts(obj: Any) -> bool:
    return isinstance(obj, (list, tuple)) and len(obj) > 0 and all(isinstance(t, str) for t in obj)


def _split(obj: Any, *, image_size: int | None, name: str, text: TextOptions | None):
    if isinstance(obj, (ImageSet, RawText)):
        return obj
    if _is_texts(obj):
        return labelled(list(obj), [None] * len(obj), [f"{name}/{i:06d}" for i in range(len(obj))])
    if isinstance(obj, tuple) and len(obj) == 2 and _is_texts(obj[0]):
        return labelled(list(obj[0]), list(obj[1]), [f"{name}/{i:06d}" for i in range(len(obj[0]))])
    if isinstance(obj, np.ndarray):
        return from_array(obj, image_size=image_size, name=name)
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], np.ndarray):
        return from_array(obj[0], obj[1], image_size=image_size, name=name)
    if type(obj).__module__.startswith("datasets."):
        return from_hf(obj, image_size=image_size, name=name, text=text)
    if isinstance(obj, torch.utils.data.Dataset):
        return from_torch(obj, image_size=image_size, name=name)
    raise SelfSupError(f"cannot use a {type(obj).__name__} as data; give a source name (e.g. 'shapes'), a numpy "
                       "array, (images, labels), a list of strings, (texts, labels), a torch Dataset or a "
                       "Hugging Face Dataset")


def as_dataset(data: Any, *, image_size: int | None = None, text: TextOptions | None = None,
               **source_options) -> Dataset:
    """Any supported data (see the module docs) as a :class:`~selfsup.data.Dataset`;
    ``text`` says how text is tokenised (a tokenizer is trained on the train split unless
    it gives one)."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str):
        return create_dataset(data, image_size=image_size, text=text, **source_options)
    splits = dict(data) if type(data).__name__ == "DatasetDict" or isinstance(data, dict) else {"train": data}
    if "train" not in splits:
        raise SelfSupError(f"a dict of splits needs a 'train' entry; got {', '.join(map(str, splits))}")
    test_key = next((k for k in ("test", "validation", "val") if k in splits), None)
    train = _split(splits["train"], image_size=image_size, name="train", text=text)
    size = image_size or getattr(train, "spec", None) and train.spec.image_size
    test = _split(splits[test_key], image_size=size, name=test_key, text=text) if test_key else None
    if isinstance(train, RawText):
        if test is not None and not isinstance(test, RawText):
            raise SelfSupError("the train split holds text but the test split does not")
        if test is not None and test.classes and test.classes != train.classes:
            test = relabel(test, train.classes, type(data).__name__)  # the test split in the train split's classes
        return text_dataset(type(data).__name__, train, test, text, cache_dir=source_options.get("cache_dir"))
    return Dataset(name=type(data).__name__, train=train, test=test)
