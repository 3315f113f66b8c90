"""Image files of any bit depth and channel count, brought to the cache's 8-bit records.

What a ``folder:PATH`` file holds, and how it becomes ``(size, size, C)`` uint8:

* **8-bit images** (PNG, JPEG, BMP, GIF, WebP, 8-bit TIFF; grey, RGB, palette, with or
  without alpha) are decoded by PIL exactly as before: converted to RGB (transparency
  composited on black, EXIF orientation applied), centre-cropped and resized.  No window
  touches them unless ``data.window`` gives numbers.
* **Deeper values** -- 16-bit PNG and TIFF (PIL modes ``I;16``, ``I``, ``F``), TIFFs of
  more than 8 bits per sample, DICOM -- are mapped to 0..255 through a *window*
  ``LO..HI``: ``LO`` and below become 0, ``HI`` and above 255, linearly in between.
  :func:`parse_window` reads the choices (``data.window``): ``auto`` (the lowest and
  highest value found in the source's deeper files, one window for the whole source),
  ``max`` (0 to the highest value found), ``container`` (each file's full range: 0..65535
  for 16 bits, 0..4095 for a DICOM with 12 bits stored) or ``LO,HI`` in the file's own
  units (Hounsfield units for CT, after the DICOM rescale), which then applies to every
  file, 8-bit ones included.  ``auto`` and ``max`` need the values first: the folder
  source reads every deeper file once (:func:`survey`) before the cache is built.
* **DICOM** (``.dcm``, ``.dicom``, or any file with the ``DICM`` marker at byte 128), read
  with ``pydicom``: the stored values go through Rescale Slope and Intercept (DICOM PS3.3
  C.11.1.1.2: output units = slope * stored value + intercept), a ``MONOCHROME1`` image is
  inverted after its window (PS3.3 C.7.6.3.1.2: its lowest value is displayed white), and
  every frame of a multi-frame file is a sample of its own.  Compressed pixel data that
  no installed decoder reads makes the file unreadable (skipped and counted like any
  other).
* **Channels.**  Grey and colour images give 3 channels (grey repeated) unless
  ``data.channels`` asks for 1 (grey; BT.601 luma of colour) or 3.  Images whose
  channels are data rather than colour -- a TIFF of 2 or more than 3 samples, or one whose
  extra sample is marked "unspecified" rather than alpha (RGB + near infrared) -- keep
  every channel: read with ``tifffile`` (``pip install tifffile``), one window for all
  bands.  A folder of them has their channel count; an image with another count is
  skipped and counted.  ``data.channels=4`` (or 2) also keeps the alpha channel of an
  RGBA (LA) PNG as data instead of compositing it.
"""
from __future__ import annotations

import contextlib
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image, ImageOps

from selfsup.data import open_regular
from selfsup.errors import SelfSupError

WINDOW_MODES = ("auto", "max", "container")
DICOM_EXTENSIONS = (".dcm", ".dicom")
DICOM_MAGIC_OFFSET = 128  # PS3.10 7.1: a 128-byte preamble, then "DICM"
DEEP_PIL_MODES = ("I", "F")  # PIL modes of more than 8 bits: I;16, I;16B, I;16S, I (32-bit), F (float)
TIFF_EXTENSIONS = (".tif", ".tiff")
EIGHT_BIT_EXTENSIONS = (".jpg", ".jpeg", ".bmp", ".gif", ".webp")  # 8-bit colour whatever PIL reads
PIL_EXTENSIONS = (".png", *EIGHT_BIT_EXTENSIONS)


class Unreadable(ValueError):
    """A file that cannot be turned into an image; the message says why (and is shown as is)."""


# --- the window and the plan of a source -------------------------------------------------


def parse_window(spec: Any) -> str | tuple[float, float]:
    """``data.window`` as ``"auto"``, ``"max"``, ``"container"`` or ``(lo, hi)``; takes
    ``"LO,HI"`` or a two-number list; anything else is a one-line error."""
    if isinstance(spec, (list, tuple)):
        parts = list(spec)
    else:
        text = str(spec if spec is not None else "auto").strip()
        if text.lower() in WINDOW_MODES:
            return text.lower()
        parts = text.strip("[]()").split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise SelfSupError(f"data.window must be {', '.join(WINDOW_MODES)} or LO,HI with LO < HI (e.g. "
                           f"-1000,400), got {spec!r}")
    return lo, hi


def window_key(spec: Any) -> str:
    """A canonical text of ``data.window`` (the cache folder's name depends on it)."""
    w = parse_window(spec)
    return w if isinstance(w, str) else f"{w[0]:.15g},{w[1]:.15g}"


@dataclass(frozen=True)
class Plan:
    """How every file of one source is decoded: ``window`` is ``(lo, hi)``, ``"container"``
    or None (values kept as they are, deeper ones scaled from their container as a last
    resort); ``every_file`` applies a numeric window to 8-bit files too; ``channels`` is
    the channel count of every record; ``alpha_as_data`` keeps alpha as a channel."""

    window: tuple[float, float] | str | None = None
    every_file: bool = False
    channels: int = 3
    alpha_as_data: bool = False

    def manifest(self) -> dict:
        return {"window": list(self.window) if isinstance(self.window, tuple) else self.window,
                "channels": self.channels}


@dataclass(frozen=True)
class Survey:
    """What a file holds, read before the cache is built: its channels (alpha apart), whether
    they are colour (grey / RGB) or data bands, whether its values go beyond 8 bits, and
    their lowest and highest value (when asked for and deeper)."""

    bands: int
    colour: bool
    deep: bool
    low: float | None = None
    high: float | None = None


def needs_survey(file: Path) -> bool:
    """Whether ``file`` may hold more than 8 bits or data bands (else it is 8-bit colour)."""
    return file.suffix.lower() not in EIGHT_BIT_EXTENSIONS


def plan(surveys: list[Survey], window: Any = "auto", channels: int | None = None) -> Plan:
    """The :class:`Plan` of a source from the surveys of its readable files."""
    w = parse_window(window)
    if channels is None:
        counts = sorted({s.bands for s in surveys if not s.colour})
        if len(counts) > 1:
            raise SelfSupError(f"the images have {' and '.join(map(str, counts))} bands; set data.channels to the "
                               "count to keep (the others are skipped)")
        chans = counts[0] if counts else 3
    else:
        chans = channels
    if isinstance(w, tuple):
        return Plan(w, every_file=True, channels=chans, alpha_as_data=channels is not None)
    deep = [s for s in surveys if s.deep and s.high is not None]
    if w == "container":
        resolved = "container"
    elif not deep:
        resolved = None
    elif w == "max":  # nothing above 0: their containers
        high = max(s.high for s in deep)
        resolved = (0.0, high) if high > 0 else "container"
    else:  # auto: from the lowest to the highest value of the deeper files; one value: their containers
        lo, hi = min(s.low for s in deep), max(s.high for s in deep)
        resolved = (lo, hi) if hi > lo else "container"
    return Plan(resolved, channels=chans, alpha_as_data=channels is not None)


# --- reading a file ----------------------------------------------------------------------


@dataclass
class Source:
    """An opened file: ``image`` (an 8-bit PIL image, decoded as before) or ``values()``
    (``(frames, H, W, bands)`` numbers), with what :class:`Survey` records and the
    ``container`` range of deeper values and ``invert`` (MONOCHROME1, min-is-white TIFF)."""

    bands: int
    colour: bool
    deep: bool
    image: Image.Image | None = None
    values: Callable[[], np.ndarray] | None = None
    container: tuple[float, float] = (0.0, 255.0)
    invert: bool = False


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a regular file with the DICOM marker ``DICM`` at byte 128."""
    try:
        with open_regular(path) as fh:
            fh.seek(DICOM_MAGIC_OFFSET)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


@contextlib.contextmanager
def open_source(file: Path, size: int | None = None, header: bool = False) -> Iterator[Source]:
    """``file`` opened as a :class:`Source` (its values read while the block runs).  ``size``
    lets a JPEG decode at a reduced scale (at least ``size``); with ``header`` an 8-bit
    image is not loaded (nor turned by its EXIF orientation): what a survey needs."""
    with open_regular(file) as fh:  # a FIFO or device is refused, not read
        suffix = file.suffix.lower()
        if suffix in DICOM_EXTENSIONS or suffix not in (*TIFF_EXTENSIONS, *PIL_EXTENSIONS):
            yield _dicom(fh)
            return
        if suffix in TIFF_EXTENSIONS:
            with _tiff(fh) as source:
                if source is not None:
                    yield source
                    return
            fh.seek(0)
        with Image.open(fh) as image:
            if size is not None:
                image.draft(None, (size, size))
            yield _pil(image if header else ImageOps.exif_transpose(image))


def _pil(image: Image.Image) -> Source:
    if not image.mode.startswith(DEEP_PIL_MODES):
        return Source(bands=len(image.getbands()), colour=True, deep=False, image=image)
    if image.mode == "F":
        container = (0.0, 1.0)
    elif image.mode.startswith("I;16") or image.format == "PNG":  # PNG holds at most 16 bits
        container = (-32768.0, 32767.0) if image.mode == "I;16S" else (0.0, 65535.0)
    else:
        container = (-2.0 ** 31, 2.0 ** 31 - 1)
    return Source(bands=1, colour=True, deep=True, container=container,
                  values=lambda: np.asarray(image, dtype=np.float32)[None, :, :, None])


@contextlib.contextmanager
def _tiff(fh) -> Iterator[Source | None]:
    """A TIFF whose channels PIL would lose or misread (data bands, unspecified extra
    samples, several samples of more than 8 bits), read with tifffile; None for the rest,
    which PIL reads (as before)."""
    try:
        import tifffile
    except ImportError:
        yield None
        return
    try:
        tif = tifffile.TiffFile(fh)
    except Exception:  # noqa: BLE001 -- not a TIFF tifffile can parse: PIL says why
        yield None
        return
    with tif:
        page = tif.pages[0]
        photometric, samples = int(page.photometric), int(page.samplesperpixel)
        extras = [int(e) for e in (page.extrasamples or ())]
        first_extra = samples - len(extras)
        alpha = [first_extra + i for i, e in enumerate(extras) if e in (1, 2)]  # 1 associated, 2 unassociated
        bands = samples - len(alpha)
        colour = photometric in (0, 1, 2) and bands in (1, 3) and 0 not in extras  # grey, min-is-white, RGB
        if photometric in (3, 5, 6, 8) or (colour and (samples == 1 or page.dtype == np.uint8)):
            yield None  # palette, CMYK, YCbCr, CIELab, and grey or 8-bit colour: PIL, as before
            return
        if np.issubdtype(page.dtype, np.integer):
            info = np.iinfo(page.dtype)
            container = (float(info.min), float(info.max))
        else:
            container = (0.0, 1.0)

        def values() -> np.ndarray:
            try:
                data = np.asarray(page.asarray())
            except Exception as err:  # noqa: BLE001 -- a codec tifffile lacks, a damaged strip
                raise Unreadable(f"tifffile cannot read it ({type(err).__name__}: {err})") from None
            if data.ndim == 3 and page.axes.startswith("S"):  # planar configuration: (samples, H, W)
                data = np.moveaxis(data, 0, -1)
            x = data.reshape(data.shape[0], data.shape[1], samples).astype(np.float32)
            if alpha:  # unassociated alpha is composited on black (as PIL does); associated is already applied
                if extras[alpha[0] - first_extra] == 2:
                    x *= x[..., alpha[:1]] / container[1]
                x = x[..., [i for i in range(samples) if i not in alpha]]
            return x[None]

        yield Source(bands=bands, colour=colour, deep=page.dtype != np.uint8, container=container,
                     invert=photometric == 0, values=values)


def _dicom(fh) -> Source:
    """A DICOM file through pydicom (``force``: files without the preamble are read too)."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise Unreadable("a DICOM file, and pydicom is not installed (pip install pydicom)") from None
    try:
        ds = pydicom.dcmread(fh, force=True)
        if "PixelData" not in ds or "Rows" not in ds:
            raise Unreadable("not a DICOM image (no pixel data found)")
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        slope, intercept = _rescale(ds)
    except Unreadable:
        raise
    except (InvalidDicomError, AttributeError, KeyError, TypeError, ValueError, IndexError, OSError, EOFError,
            struct.error) as err:
        raise Unreadable(f"not a readable DICOM file ({type(err).__name__}: {err})") from None
    stored = (-2.0 ** (bits - 1), 2.0 ** (bits - 1) - 1) if signed else (0.0, 2.0 ** bits - 1)
    ends = sorted(slope * v + intercept for v in stored)
    rescaled = (slope, intercept) != (1.0, 0.0)

    def values() -> np.ndarray:
        try:
            arr = ds.pixel_array
        except (RuntimeError, NotImplementedError, ValueError, AttributeError, KeyError, TypeError,
                IndexError, struct.error) as err:
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            what = f"compressed DICOM ({syntax.name})" if syntax is not None and syntax.is_compressed else "DICOM"
            raise Unreadable(f"{what} pixel data cannot be decoded: {' '.join(str(err).split())[:300]}") from None
        if photometric.startswith("YBR_FULL") and int(pydicom.__version__.split(".")[0]) < 3:
            from pydicom.pixel_data_handlers.util import convert_color_space  # pydicom 3 converts by itself

            arr = convert_color_space(arr, photometric, "RGB")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        arr = np.asarray(arr).reshape(frames, int(ds.Rows), int(ds.Columns), samples)
        values = arr.astype(np.float32)  # exact for up to 24 bits; a window needs no more
        return values * np.float32(slope) + np.float32(intercept) if rescaled else values

    return Source(bands=samples, colour=samples in (1, 3), deep=rescaled or bits > 8 or signed,
                  container=(ends[0], ends[1]), invert=photometric == "MONOCHROME1", values=values)


def _rescale(ds) -> tuple[float, float]:
    """Rescale Slope and Intercept (PS3.3 C.11.1.1.2), at the top level or, in enhanced
    multi-frame files, in the shared functional groups' Pixel Value Transformation
    (PS3.3 C.7.6.16.2.9); (1, 0) when absent.  Per-frame values are not read."""
    holder = ds
    if "RescaleSlope" not in ds and "SharedFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0]
        if "PixelValueTransformationSequence" in shared:
            holder = shared.PixelValueTransformationSequence[0]
    slope = float(holder.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(holder.get("RescaleIntercept", 0.0) or 0.0)
    return slope, intercept


# --- a file's survey and its records -----------------------------------------------------


def survey(file: Path, observe: bool) -> Survey:
    """What ``file`` holds; with ``observe`` the values of a deeper file are read for their
    lowest and highest value."""
    with open_source(file, header=True) as src:  # an 8-bit image is not loaded; a deeper one is when observed
        low = high = None
        if observe and src.deep:
            values = src.values()
            finite = values[np.isfinite(values)]
            if finite.size:
                low, high = float(finite.min()), float(finite.max())
        return Survey(src.bands, src.colour, src.deep, low, high)


def decode(file: Path, size: int, plan: Plan) -> np.ndarray:
    """``file`` as ``(size, size, C)`` uint8, or ``(frames, size, size, C)`` for a DICOM of
    several frames; raises :class:`Unreadable` (or PIL's errors) when it cannot be."""
    with open_source(file, size) as src:
        if src.image is not None:
            return _from_image(src.image, size, plan)
        frames = _to_8_bits(src.values(), src, plan)
    frames = _channels(frames, src, plan)
    out = np.stack([_square_bands(f, size) for f in frames])
    return out[0] if len(out) == 1 else out


def _from_image(image: Image.Image, size: int, plan: Plan) -> np.ndarray:
    """An 8-bit PIL image as before (3 channels: :func:`to_rgb`), or grey, or with alpha as data."""
    has_alpha = "A" in image.mode or "transparency" in image.info
    if plan.channels == 3:
        out = to_rgb(image)
    elif plan.channels == 1:
        out = to_rgb(image).convert("L")  # BT.601 luma
    elif plan.alpha_as_data and has_alpha and plan.channels in (2, 4):
        out = image.convert("LA" if plan.channels == 2 else "RGBA")
    else:
        raise Unreadable(f"a {image.mode} image, not {plan.channels} channels (data.channels)")
    if plan.every_file:  # a numeric window applies to 8-bit values too
        out = Image.fromarray(np.round(_window(np.asarray(out, dtype=np.float64), plan.window) * 255)
                              .astype(np.uint8))
    return np.asarray(square(out, size)).reshape(size, size, plan.channels)


def _window(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def _to_8_bits(values: np.ndarray, src: Source, plan: Plan) -> np.ndarray:
    """(F, H, W, B) values -> uint8 through the plan's window (8-bit values stay as they
    are unless the window applies to every file); inverted for MONOCHROME1."""
    if src.deep or plan.every_file:
        window = plan.window
        if window == "container" or window is None:
            window = src.container
        x = _window(values, window)
        x = np.nan_to_num(x, nan=0.0)
    else:
        x = values / 255.0
    if src.invert:  # after the window, as a display shows it (PS3.3 C.7.6.3.1.2)
        x = 1.0 - x
    return np.round(x * 255).astype(np.uint8)


def _channels(frames: np.ndarray, src: Source, plan: Plan) -> np.ndarray:
    """(F, H, W, B) uint8 -> (F, H, W, plan.channels): grey repeated or luma for colour,
    bands kept only when the count is the one asked."""
    b, want = frames.shape[3], plan.channels
    if b == want:
        return frames
    if src.colour and b == 1 and want == 3:
        return np.repeat(frames, 3, axis=3)
    if src.colour and b == 3 and want == 1:
        return np.stack([np.asarray(Image.fromarray(f).convert("L")) for f in frames])[..., None]
    kind = "colour channels" if src.colour else "bands"
    raise Unreadable(f"{b} {kind}, not {want} (the other images' channel count; data.channels sets it)")


def _square_bands(frame: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) uint8 -> (size, size, C): each channel centre-cropped and resized as PIL does."""
    c = frame.shape[2]
    if c == 3:
        return np.asarray(square(Image.fromarray(frame, "RGB"), size))
    return np.stack([np.asarray(square(Image.fromarray(frame[..., k], "L"), size)) for k in range(c)], axis=-1)


# --- 8-bit helpers (the folder source's decoding since its first version) -----------------


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: what 8-bit images get (and images handed over from
    Python, whose 16-bit grey is scaled by 1/257 and float grey clipped to 0..255)."""
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
