"""Data: every source behind one sample contract, read in batches by one loader.

The data path, in the order a sample travels::

    source (shapes, digits, folder:PATH, hf:PATH, a numpy array, a torch or HF Dataset;
            text: lang, pydoc, text:PATH, hf:PATH with a text column)
      -> a SampleSet: labels, ids, factors, and the samples read by index --
         an ImageSet's ``images`` store (in memory, the on-disk cache of
         :mod:`selfsup.data.cache`, or a Dataset), or a TextSet's token ids
         (:mod:`selfsup.data.text`, tokenised by :mod:`selfsup.data.tokenizer`)
      -> loader.Loader: the order of each epoch (a pure function of seed and epoch),
         this process's shard, batches of indices read ahead in a thread
      -> to_input: uint8 (B, H, W, C) -> float (B, C, H, W) in [0, 1] on the device;
         token ids (B, L) -> int64
      -> views.augment (image methods, fine-tuning), masking (MLM) or the encoder

A source is named by a spec ``NAME`` or ``NAME:PATH`` (split at the first colon) and
built with :func:`create_dataset` into a :class:`Dataset`: a train split and, where the
source has one, a test split.  :func:`as_dataset` also takes the Python objects.  What a
method or an evaluation may know about the samples is their :class:`SampleSpec`; the
samples are never handed out as one array, only as batches read by index, so a source
larger than memory (a folder read from the on-disk cache, a Dataset) trains like a small
one.

Example::

    >>> import torch
    >>> from selfsup.data import create_dataset, to_input
    >>> ds = create_dataset("digits")  # bundled with scikit-learn, no download
    >>> ds.spec.image_size, ds.spec.channels, len(ds.train), len(ds.test)
    (8, 1, 1437, 360)
    >>> to_input(torch.from_numpy(ds.train.read([0, 1, 2]))).shape  # uint8 NHWC -> float NCHW
    torch.Size([3, 1, 8, 8])
"""
from __future__ import annotations

import dataclasses
import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch
from PIL import Image

from selfsup.errors import SelfSupError
from selfsup.registry import Registry


@dataclass(frozen=True)
class SampleSpec:
    """What a method or an evaluation may know about the samples of a source."""

    modality: str = "image"            # "image" or "text"
    image_size: int | None = None      # side in px; images are square
    channels: int | None = None        # 1 (grey), 3 (RGB) or any other count of data bands
    vocab_size: int | None = None      # text: tokenizer vocabulary
    seq_len: int | None = None         # text: tokens per sample
    classes: tuple[str, ...] = ()      # class names indexed by label; () when unlabeled
    factor_names: tuple[str, ...] = () # ground-truth factors, where the source knows them


def to_input(batch: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """A batch as read from a split -> model input on ``device``: the one place where
    stored samples become tensors a model takes.  uint8 images (B, H, W, C) become float32
    (B, C, H, W) in [0, 1]; token ids (B, L) become int64."""
    x = batch.to(device, non_blocking=True) if device is not None else batch
    if x.dtype == torch.uint8:
        return x.permute(0, 3, 1, 2).float().div_(255)
    return x.long()


class Store:
    """Base of the array-like stores an :class:`ImageSet` reads from: ``store[key]`` with an
    int, a slice or an integer array (negative indices allowed); subclasses set
    ``shape`` and ``dtype`` and implement ``rows(idx)`` for a checked int64 array."""

    shape: tuple[int, ...]
    dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        n = len(self)
        idx = np.arange(*key.indices(n)) if isinstance(key, slice) else np.asarray(key, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {n} samples")
        return self.rows(np.where(idx < 0, idx + n, idx))

    def __array__(self, dtype=None, copy=None):
        out = self[np.arange(len(self))]
        return out.astype(dtype) if dtype is not None else out


class IndexedView(Store):
    """Rows ``index`` of an array-like store, read lazily: ``view[i]`` reads
    ``base[index[i]]``, so a subset of a disk-backed store stays on disk."""

    def __init__(self, base: Any, index: np.ndarray):
        self.base, self.index = base, np.asarray(index, dtype=np.int64)
        self.shape = (len(self.index), *base.shape[1:])
        self.dtype = base.dtype

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return self.base[self.index[idx]]


def take(store: Any, idx) -> Any:
    """``store[idx]`` for an in-memory numpy array (a copy, as always), a lazy
    :class:`IndexedView` for anything else (disk caches, memory maps, Datasets)."""
    idx = np.asarray(idx)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    if type(store) is np.ndarray:
        return store[idx]
    if isinstance(store, IndexedView):  # a view of a view reads the base directly
        return IndexedView(store.base, store.index[idx])
    return IndexedView(store, idx)


class SampleSet:
    """What every split shares, whatever its samples are: ``labels``, stable ``ids``,
    ``classes``, optional ground-truth ``factors``, and the stores named in
    ``row_fields`` (the samples themselves), read in batches by index through
    :meth:`read` or a :class:`selfsup.data.loader.Loader`, never as a whole."""

    row_fields: tuple[str, ...] = ()  # the per-sample stores besides labels, ids and factors; the first is read
    labels: np.ndarray
    ids: Any
    classes: list[str]
    factors: np.ndarray | None
    factor_names: list[str]

    def _check_lengths(self) -> None:
        lengths = {len(getattr(self, f)) for f in self.row_fields} | {len(self.labels), len(self.ids)}
        if self.factors is not None:
            lengths.add(len(self.factors))
        if len(lengths) != 1:
            raise ValueError(f"{', '.join(self.row_fields)}, labels, ids and factors must have the same length")

    def __len__(self) -> int:
        return int(getattr(self, self.row_fields[0]).shape[0])

    @property
    def has_labels(self) -> bool:
        """True when every sample has a label and the class names are known."""
        return bool(self.classes) and bool(np.all(np.asarray(self.labels) >= 0))

    def read(self, idx) -> np.ndarray:
        """Samples ``idx`` (integer indices) as one array: what the loader batches."""
        return np.ascontiguousarray(getattr(self, self.row_fields[0])[np.asarray(idx, dtype=np.int64)])

    def subset(self, idx):
        """The rows ``idx`` (integer indices or a boolean mask) of every array; lazy for
        stores that are not in memory."""
        idx = np.asarray(idx)
        return dataclasses.replace(
            self, **{f: take(getattr(self, f), idx) for f in self.row_fields},
            labels=np.asarray(self.labels)[idx], ids=take(self.ids, idx), classes=list(self.classes),
            factors=None if self.factors is None else np.asarray(self.factors)[idx],
            factor_names=list(self.factor_names))


@dataclass
class ImageSet(SampleSet):
    """One split of images: ``images`` is anything indexable by an integer array that
    returns ``(B, H, W, C)`` uint8 and has ``shape`` and ``dtype``: a numpy array (in
    memory), a :class:`selfsup.data.cache.RecordFile` (on disk, bounded memory), a
    :class:`selfsup.data.python.DatasetImages` (a torch or Hugging Face Dataset) or an
    :class:`IndexedView` of one of them.
    """

    images: Any  # (N, H, W, C) uint8 store, square sides; C = 1 (grey), 3 (RGB) or any count of bands
    labels: np.ndarray  # (N,) int64, -1 where unknown
    ids: Any  # (N,) str, stable per image (an array, or a store indexed like one)
    classes: list[str]  # class names indexed by label; [] when unlabeled
    factors: np.ndarray | None = None  # (N, F) float32
    factor_names: list[str] = field(default_factory=list)
    row_fields = ("images",)

    def __post_init__(self):
        shape, dtype = tuple(self.images.shape), self.images.dtype
        if len(shape) != 4 or shape[3] < 1 or dtype != np.uint8:
            raise ValueError(f"images must be (N, H, W, C) uint8, got {shape} {dtype}")
        self._check_lengths()

    @property
    def spec(self) -> SampleSpec:
        return SampleSpec("image", image_size=int(self.images.shape[1]), channels=int(self.images.shape[3]),
                          classes=tuple(self.classes), factor_names=tuple(self.factor_names))


@dataclass
class Dataset:
    """A named source with its train split and optional test split."""

    name: str  # the spec, e.g. "shapes" or "folder:/x"
    train: SampleSet  # an ImageSet or a TextSet
    test: SampleSet | None  # None when the source has no test split
    test_origin: str = "source"  # "source", or how the test split was carved (hold_out_test)

    @property
    def spec(self) -> SampleSpec:
        return self.train.spec

    @property
    def channels(self) -> int:
        return self.spec.channels

    @property
    def image_size(self) -> int:
        """Side length; images are square."""
        return self.spec.image_size


DATASETS = Registry("data source")  # entries are builder functions, see create_dataset


def source_modality(spec: str) -> str | None:
    """What the source ``spec`` (``NAME`` or ``NAME:PATH``) holds, known from its name alone:
    ``"text"`` or ``"image"`` (a source's ``modality`` in :data:`DATASETS`, images unless it
    says otherwise), or None when only reading it tells (``hf:PATH``) or it is not a
    registered source (a Python object)."""
    name = spec.partition(":")[0]
    if name not in DATASETS:
        return None
    return DATASETS.meta(name).get("modality", "image")


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
    in_memory: bool = False,
    progress: bool = True,
    text: Any = None,
    window: str | None = None,
    channels: int | None = None,
) -> Dataset:
    """Build the source named by ``spec`` (``NAME`` or ``NAME:PATH``).

    ``image_size`` overrides the source's native side length; ``cache_dir`` is where
    generated data is kept; ``strict`` turns skipped unreadable files into an error;
    ``download`` lets torchvision sources fetch missing files; ``seed`` fixes generated
    data and subsampling; ``num_train``/``num_test`` cap (or, for generated data, set)
    the split sizes; ``in_memory`` keeps a cached folder's images in memory instead of
    reading them from disk; ``progress`` shows a bar while a folder is being cached;
    ``text`` (a :class:`selfsup.data.text.TextOptions`) says how text sources read and
    tokenise their samples; ``window`` and ``channels`` say how a folder's images of more
    than 8 bits or other than RGB become its records (:mod:`selfsup.data.pixels`).
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
        in_memory=in_memory,
        progress=progress,
        text=text,
        window=window,
        channels=channels,
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
        planes = [image] if image.shape[2] == 3 else [image[..., k] for k in range(image.shape[2])]  # bands one by one
        out[i] = np.concatenate([np.asarray(Image.fromarray(p).resize((size, size), Image.BILINEAR))
                                 .reshape(size, size, -1) for p in planes], axis=-1)
    return out


def hold_out_test(ds: Dataset, fraction: float = 0.2, seed: int = 0) -> Dataset:
    """``ds`` with a stratified ``fraction`` of its (labelled) train split held out as the
    test split, for sources that have none.  Too few images to hold out any is an error:
    an empty test split would give NaN accuracies."""
    from selfsup.data.splits import smallest_class_to_split, stratified_split

    labels = np.asarray(ds.train.labels)
    kept, held = stratified_split(labels, fraction, seed)
    if len(held) == 0:
        need, largest = smallest_class_to_split(fraction), int(np.unique(labels, return_counts=True)[1].max(initial=0))
        raise SelfSupError(
            f"{ds.name} has too few labelled images to hold out a test split: {fraction:.0%} of each class is "
            f"held out, which takes at least {need} images per class (the largest class has {largest}); add "
            "images, or give a test split (for a folder: PATH/train/CLASS and PATH/test/CLASS)")
    return Dataset(name=ds.name, train=ds.train.subset(kept), test=ds.train.subset(held),
                   test_origin=f"{fraction:.0%} of the training images held out (stratified, seed {seed})")


def walk_files(directory: Path, keep: Callable[[str], bool]) -> list[Path]:
    """Files whose name ``keep`` accepts at any depth below ``directory``, sorted; hidden
    folders are skipped and symbolic links followed, but a folder reached twice (a link
    loop such as ``ln -s . loop``, or two links to one place) is read once."""
    found, seen = [], set()
    for parent, dirnames, filenames in os.walk(directory, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # prunes and orders the walk
        found += [Path(parent, f) for f in filenames if keep(f)]
    return sorted(found)


def _not_regular(mode: int) -> str | None:
    """What a file of this ``st_mode`` is when it is not a regular file, else None."""
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((kind for test, kind in kinds if test(mode)), "a special file")


def open_regular(path: str | Path) -> BinaryIO:
    """``path`` opened for binary reading, following links; anything but a regular file
    is refused with an OSError saying what it is, without being opened: a FIFO would block
    the read forever (no Ctrl-C gets through), a device may never end.  A dangling link or
    a link loop is an OSError that says so.  The file is opened non-blocking and checked
    again, in case it was swapped for a FIFO after the first check.  The OSError's
    ``strerror`` is the reason alone, e.g. ``not a regular file (a FIFO)``."""
    try:
        kind = _not_regular(os.stat(path).st_mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "a symbolic link loop", str(path)) from None
        if err.errno == errno.ENOENT and os.path.islink(path):
            raise OSError(errno.ENOENT, f"a link to a missing file ({os.readlink(path)})", str(path)) from None
        raise
    if kind is not None:
        raise OSError(errno.EINVAL, f"not a regular file ({kind})", str(path))
    return open(path, "rb", opener=_open_checked)


def _open_checked(path: str, flags: int) -> int:
    """``os.open`` that cannot block on a FIFO and returns only a regular file's descriptor."""
    nonblock = getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags | getattr(os, "O_NOCTTY", 0) | nonblock)
    try:
        kind = _not_regular(os.fstat(fd).st_mode)
        if kind is not None:
            raise OSError(errno.EINVAL, f"not a regular file ({kind})", path)
        if nonblock:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def default_cache_dir() -> Path:
    """``$SELFSUP_CACHE`` if set, else ``~/.cache/selfsup``."""
    return Path(os.environ.get("SELFSUP_CACHE") or Path.home() / ".cache" / "selfsup")


def random_subset(images: ImageSet, n: int | None, seed: int) -> ImageSet:
    """At most ``n`` rows chosen at random (kept in their original order); all if None."""
    if n is None or n >= len(images):
        return images
    idx = np.random.default_rng(seed).choice(len(images), size=n, replace=False)
    return images.subset(np.sort(idx))


# The source modules register themselves in DATASETS; they import the names above, so
# this import comes last.
from selfsup.data import cache, digits, folder, glyphs, hf, language, photo_digits, shapes, text, torchvision_sets  # noqa: E402, F401
from selfsup.data.python import as_dataset  # noqa: E402, F401
