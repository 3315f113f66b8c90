"""``folder:PATH``: every image under a folder.

Layout:

* ``PATH/<class>/...``: labelled; the class is the first-level sub-folder (sorted by
  name), and images may sit at any depth below it.  Images lying directly in PATH next
  to class folders get label -1 (with a warning).
* ``PATH/*.png`` with no sub-folders holding images: unlabelled (labels -1, classes []).
* ``PATH/train/`` plus ``PATH/test/`` (or ``PATH/val/``): the two splits, each laid out
  as above; the classes come from ``train/``.  Otherwise the source has no test split.

Files are matched by extension (png jpg jpeg bmp gif tif tiff webp dcm dicom, any case),
and a file without one (or with a number for one, as DICOM files named by their UID are)
counts when it holds the DICOM marker at byte 128; other files and hidden entries (names
starting with a dot) are ignored.  Every image is brought to 8 bits per channel as
:mod:`selfsup.data.pixels` describes -- 8-bit images become RGB as they always did
(transparency composited on black, EXIF orientation applied); deeper ones (16-bit PNG and
TIFF, DICOM) go through the source's window (``window``: by default from the lowest to the
highest value of its deeper files); DICOM gets its rescale, MONOCHROME1 inversion and one
sample per frame; TIFFs of data bands keep every band (``channels``) -- then
centre-cropped to a square and resized to ``image_size`` (default 64) with PIL bilinear,
once: the decoded images go into an on-disk cache (:mod:`selfsup.data.cache`) that later
runs read by index without decoding again, and that is rebuilt when the folder's files
change.  A file with an image extension that cannot be decoded (compressed DICOM without
its decoder, too) -- and one that is not a regular file (a FIFO, a socket, a device: never
opened), a dangling link or a link loop -- is skipped and counted in one warning, or
raises with ``strict``.
Ids are paths relative to PATH, with forward slashes; a frame of a multi-frame DICOM file
is ``PATH#FRAME`` (from 0).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from selfsup.data import (DATASETS, Dataset, ImageSet, cache, check_path, default_cache_dir, pixels,
                          random_subset, walk_files)
from selfsup.data.pixels import square, to_rgb  # noqa: F401 (their home before pixels; python.py imports them here)
from selfsup.errors import SelfSupError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", *pixels.DICOM_EXTENSIONS)
DEFAULT_IMAGE_SIZE = 64
# What PIL raises for a file it cannot decode (UnidentifiedImageError is an OSError);
# pixels.Unreadable is a ValueError.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _is_image(name: str) -> bool:
    return _visible(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def _maybe_dicom(name: str) -> bool:
    """A name DICOM files often have: no extension (``IM0001``) or a number for one (a UID)."""
    suffix = Path(name).suffix
    return _visible(name) and (not suffix or suffix[1:].isdigit())


def _is_image_file(path: Path) -> bool:
    """An image by its extension, or a DICOM file by its marker (read only for names
    without an image extension)."""
    return _is_image(path.name) or (_maybe_dicom(path.name) and pixels.is_dicom_file(path))


def _image_files(directory: Path) -> list[Path]:
    """Image files at any depth below ``directory``, in a stable (sorted) order, each
    folder once however many links lead to it."""
    found = walk_files(directory, lambda name: _is_image(name) or _maybe_dicom(name))
    return [f for f in found if _is_image(f.name) or pixels.is_dicom_file(f)]


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
    loose = [p for p in entries if not p.is_dir() and _is_image_file(p)]  # broken links too: skipped later
    if loose:
        warnings.warn(
            f"{len(loose)} images directly under {split_dir} are outside the class folders; "
            "they get label -1 (unknown)",
            stacklevel=3,
        )
        files += loose
        labels += [-1] * len(loose)
    return files, labels, classes


def _decode(file: Path, size: int, plan: pixels.Plan = pixels.Plan()) -> np.ndarray:
    """Read one image as (size, size, C) uint8 -- (frames, size, size, C) for a multi-frame
    DICOM -- centre square crop, then resize (by default as 8-bit RGB, deeper values from
    their container's range)."""
    return pixels.decode(file, size, plan)


def _try_decode(file: Path, size: int, plan: pixels.Plan = pixels.Plan()) -> np.ndarray | str:
    """The image (``(frames, ...)`` for a multi-frame DICOM), or the error message when the
    file cannot be decoded."""
    try:
        return _decode(file, size, plan)
    except pixels.Unreadable as err:
        return str(err)
    except _DECODE_ERRORS as err:
        if isinstance(err, OSError) and err.strerror and err.filename is not None:
            return err.strerror  # opening failed: "not a regular file (a FIFO)", "a symbolic link loop", ...
        return f"{type(err).__name__}: {err}"


def _try_survey(file: Path, observe: bool) -> pixels.Survey | None:
    """What ``file`` holds, or None when it cannot be read (the build then skips it)."""
    try:
        return pixels.survey(file, observe)
    except _DECODE_ERRORS:
        return None


def _surveys(files: list[Path], observe: bool, progress: bool) -> list[pixels.Survey]:
    """The surveys of the files that may hold more than 8 bits or data bands (JPEG, BMP,
    GIF and WebP are 8-bit colour and not opened), read in parallel; ``observe`` reads the
    values of deeper files for their range."""
    from concurrent.futures import ThreadPoolExecutor

    files = [f for f in files if pixels.needs_survey(f)]
    if not files:
        return []
    workers = min(8, os.cpu_count() or 1)
    what = "the value range" if observe else "the header"
    bar = cache._progress(len(files), progress, f"reading {what} of {len(files)} images")
    found = []
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="selfsup-survey") as pool:
            for _, result in cache._bounded_map(pool, lambda f: _try_survey(f, observe), files, 4 * workers):
                bar.update(1)
                if result is not None:
                    found.append(result)
    finally:
        bar.close()
    return found


def _decoded_before_depths(manifest: dict, files: list[Path]) -> bool:
    """Whether a cache was built before bit depths were kept (its manifest has no
    ``channels``) from files with more than 8 bits or data bands: then it holds them scaled
    by 1/257 or cut to RGB, and is built again.  Only such caches read the files' headers."""
    if "channels" in manifest:
        return False
    return any(s.deep or not s.colour for s in _surveys(files, observe=False, progress=False))


def _cache_folder(root: Path, size: int, cache_dir: str | Path | None, window: str = "auto",
                  channels: int | None = None) -> Path:
    """Where the folder's cache lives; a window or channel count other than the defaults has
    a cache of its own (the defaults keep the name caches always had)."""
    options = "" if (window, channels) == ("auto", None) else f"|window={window}|channels={channels}"
    key = hashlib.sha1(f"{root}|{size}{options}".encode()).hexdigest()[:16]
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
    window: str | None = None,
    channels: int | None = None,
    **_ignored,
) -> Dataset:
    """The ``folder`` source, decoded once into the on-disk cache of
    :mod:`selfsup.data.cache` (under ``cache_dir``/folders) and read from there by index;
    ``in_memory`` loads the cached images into memory instead.  ``num_*`` subsample with
    ``seed``.  ``window`` and ``channels`` are ``data.window`` and ``data.channels`` (see
    :mod:`selfsup.data.pixels`)."""
    check_path("folder", path, required=True)
    window = pixels.window_key(window or "auto")
    if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int) or channels < 1):
        raise SelfSupError(f"data.channels must be a positive whole number or null (automatic), got {channels!r}")
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

    folder = _cache_folder(root.resolve(), size, cache_dir, window, channels)
    all_files = [f for files, _, _ in scans.values() for f in files]
    fp = cache.fingerprint(all_files)
    try:
        opened = cache.open_cache(folder, fp)
        if opened is None and (folder / "manifest.json").exists():
            warnings.warn(f"{path} changed since it was cached; caching it again", stacklevel=2)
        elif opened is not None and _decoded_before_depths(opened["manifest"], all_files):
            warnings.warn(f"{path} holds images of more than 8 bits or more than 3 bands, cached by an earlier "
                          "selfsup that scaled them by 1/257 or cut them to RGB; caching it again", stacklevel=2)
            opened = None
    except cache.CorruptCache as err:
        warnings.warn(f"the image cache {folder} is corrupt ({err}); rebuilding it", stacklevel=2)
        opened = None
    if opened is None:
        observe = pixels.parse_window(window) in ("auto", "max")
        plan = pixels.plan(_surveys(all_files, observe, progress), window, channels)
        cache.build_cache(folder, scans, lambda f: _try_decode(f, size, plan), (size, size, plan.channels),
                          {"source": str(root.resolve()), "image_size": size, "classes": classes,
                           "fingerprint": fp, **plan.manifest()}, strict=strict, progress=progress)
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
