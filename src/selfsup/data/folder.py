"""``folder:PATH``: every image under a folder.

Layout:

* ``PATH/<class>/...``: labelled; the class is the first-level sub-folder (sorted by
  name), and images may sit at any depth below it.  Images lying directly in PATH next
  to class folders get label -1 (with a warning).
* ``PATH/*.png`` with no sub-folders holding images: unlabelled (labels -1, classes []).
* ``PATH/train/`` plus ``PATH/test/`` (or ``PATH/val/``): the two splits, each laid out
  as above; the classes come from ``train/``.  Otherwise the source has no test split.

Files are matched by extension (png jpg jpeg bmp gif tif tiff webp, any case); other
files and hidden entries (names starting with a dot) are ignored.  Every image is
converted to 8-bit RGB (16-bit values scaled by 1/257, transparency composited on
black, EXIF orientation applied), centre-cropped to a square and resized to
``image_size`` (default 64) with PIL bilinear, once: the decoded images go into an
on-disk cache (:mod:`selfsup.data.cache`) that later runs read by index without
decoding again, and that is rebuilt when the folder's files change.  A file with an image extension that
cannot be decoded -- and one that is not a regular file (a FIFO, a socket, a device: never
opened), a dangling link or a link loop -- is skipped and counted in one warning, or
raises with ``strict``.
Ids are paths relative to PATH, with forward slashes.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from selfsup.data import (DATASETS, Dataset, ImageSet, cache, check_path, default_cache_dir, open_regular,
                          random_subset, walk_files)
from selfsup.errors import SelfSupError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_IMAGE_SIZE = 64
# What PIL raises for a file it cannot decode (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _is_image(name: str) -> bool:
    return _visible(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def _image_files(directory: Path) -> list[Path]:
    """Image files at any depth below ``directory``, in a stable (sorted) order, each
    folder once however many links lead to it."""
    return walk_files(directory, _is_image)


def _scan(split_dir: Path, classes: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    """Files, labels and class names of one split.

    ``classes`` None means "find them here"; otherwise they come from the train split and
    an extra class folder here is an error.
    """
    entries = sorted(p for p in split_dir.iterdir() if _visible(p.name))
    here = split_dir.resolve()
    # a sub-folder that links back to this folder or above it (``ln -s . loop``) is not a class
    folders = [p for p in entries if p.is_dir() and not (p.resolve() == here or p.resolve() in here.parents)]
    class_files = {p.name: _image_files(p) for p in folders}
    class_files = {name: files for name, files in class_files.items() if files}
    if classes is None:
        classes = sorted(class_files)
    if not classes:  # unlabelled: every image anywhere below split_dir
        files = _image_files(split_dir)
        return files, [-1] * len(files), []

    unknown = sorted(set(class_files) - set(classes))
    if unknown:
        raise SelfSupError(
            f"{split_dir} has class folders {unknown} that the train split lacks; "
            "give every split the same class folders"
        )
    files, labels = [], []
    for label, name in enumerate(classes):
        files += class_files.get(name, [])
        labels += [label] * len(class_files.get(name, []))
    loose = [p for p in entries if not p.is_dir() and _is_image(p.name)]  # broken links too: skipped later
    if loose:
        warnings.warn(
            f"{len(loose)} images directly under {split_dir} are outside the class folders; "
            "they get label -1 (unknown)",
            stacklevel=3,
        )
        files += loose
        labels += [-1] * len(loose)
    return files, labels, classes


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB."""
    if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit integer or float gray
        values = np.asarray(image, dtype=np.float32)
        if image.mode.startswith("I"):
            values = values / 257  # 0..65535 -> 0..255
        gray = np.clip(np.round(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if "A" in image.mode or "transparency" in image.info:  # composite on black
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)  # (H, W, 4)
        rgb = rgba[..., :3] * rgba[..., 3:] / 255
        return Image.fromarray(np.round(rgb).astype(np.uint8))
    return image.convert("RGB")


def square(image: Image.Image, size: int) -> Image.Image:
    """The centre square of ``image``, resized to ``size`` x ``size`` with PIL bilinear."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)


def _decode(file: Path, size: int) -> np.ndarray:
    """Read one image as (size, size, 3) uint8: centre square crop, then resize."""
    with open_regular(file) as fh, Image.open(fh) as image:  # a FIFO or device is refused, not read
        image.draft(None, (size, size))  # lets JPEG decode at a reduced scale, >= size
        rgb = to_rgb(ImageOps.exif_transpose(image))
    return np.asarray(square(rgb, size))


def _try_decode(file: Path, size: int) -> np.ndarray | str:
    """The image, or the error message when the file cannot be decoded."""
    try:
        return _decode(file, size)
    except _DECODE_ERRORS as err:
        if isinstance(err, OSError) and err.strerror and err.filename is not None:
            return err.strerror  # opening failed: "not a regular file (a FIFO)", "a symbolic link loop", ...
        return f"{type(err).__name__}: {err}"


def _cache_folder(root: Path, size: int, cache_dir: str | Path | None) -> Path:
    key = hashlib.sha1(f"{root}|{size}".encode()).hexdigest()[:16]
    return Path(cache_dir or default_cache_dir()) / "folders" / f"{root.name or 'root'}-{size}px-{key}"


@DATASETS.register("folder", help="images under PATH, class = first-level sub-folder (folder:PATH)")
def build(
    path: str | None = None,
    *,
    image_size: int | None = None,
    strict: bool = False,
    seed: int = 0,
    num_train: int | None = None,
    num_test: int | None = None,
    cache_dir: str | Path | None = None,
    in_memory: bool = False,
    progress: bool = True,
    **_ignored,
) -> Dataset:
    """The ``folder`` source, decoded once into the on-disk cache of
    :mod:`selfsup.data.cache` (under ``cache_dir``/folders) and read from there by index;
    ``in_memory`` loads the cached images into memory instead.  ``num_*`` subsample with
    ``seed``."""
    check_path("folder", path, required=True)
    root = Path(path).expanduser()
    if not root.exists():
        raise SelfSupError(f"data folder {path} does not exist; check the path in folder:PATH")
    if not root.is_dir():
        raise SelfSupError(f"{path} is not a folder; folder:PATH needs a directory of images")
    size = image_size or DEFAULT_IMAGE_SIZE

    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        split_dirs = {"train": root / "train", "test": test_dir}
    else:
        split_dirs = {"train": root}

    scans, classes = {}, None
    for split, directory in split_dirs.items():
        files, labels, classes = _scan(directory, classes)
        if not files:
            raise _no_images(split_dirs[split])
        scans[split] = (files, labels, [f.relative_to(root).as_posix() for f in files])

    folder = _cache_folder(root.resolve(), size, cache_dir)
    fp = cache.fingerprint(f for files, _, _ in scans.values() for f in files)
    try:
        opened = cache.open_cache(folder, fp)
        if opened is None and (folder / "manifest.json").exists():
            warnings.warn(f"{path} changed since it was cached; caching it again", stacklevel=2)
    except cache.CorruptCache as err:
        warnings.warn(f"the image cache {folder} is corrupt ({err}); rebuilding it", stacklevel=2)
        opened = None
    if opened is None:
        cache.build_cache(folder, scans, lambda f: _try_decode(f, size), (size, size, 3),
                          {"source": str(root.resolve()), "image_size": size, "classes": classes,
                           "fingerprint": fp}, strict=strict, progress=progress)
        opened = cache.open_cache(folder, fp)
    manifest = opened["manifest"]
    if manifest["skipped"]:
        first, reason = manifest["first_skipped"]
        if strict:
            raise SelfSupError(f"cannot read image {first} ({reason}); fix or remove it, or drop --strict")
        warnings.warn(
            f"skipped {manifest['skipped']} unreadable files under {path} (first: {first}: {reason}); "
            "use --strict to make this an error",
            stacklevel=2,
        )

    sets = {}
    for split, (records, labels, ids) in opened["splits"].items():
        if len(records) == 0:
            raise _no_images(split_dirs[split])
        images = ImageSet(images=np.asarray(records) if in_memory else records, labels=labels, ids=ids,
                          classes=list(classes))
        sets[split] = random_subset(images, num_train if split == "train" else num_test, seed)
    return Dataset(name=f"folder:{path}", train=sets["train"], test=sets.get("test"))


def _no_images(directory: Path) -> SelfSupError:
    return SelfSupError(
        f"no images found under {directory}: expected readable files ending in "
        f"{' '.join(IMAGE_EXTENSIONS)} (case-insensitive)"
    )
