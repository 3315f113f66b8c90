"""``shapes``: procedurally rendered shapes with known factors of variation.

Every image shows one of eight shapes (the label) on a textured background.  All other
properties are nuisance factors, sampled independently per image:

* position (``pos_x``, ``pos_y``) and size (``scale``, the radius of the shape's
  bounding circle), all as fractions of the image side;
* ``rotation`` in radians;
* object colour (``object_hue``, ``object_saturation``, ``object_value``);
* background colour (``background_hue``, ``background_saturation``,
  ``background_value``); the two values are always 0.34 to 0.51 apart so the shape
  keeps its contrast;
* background texture: ``texture_kind`` (0 flat, 1 stripes, 2 checker, 3 waves) with
  ``texture_frequency`` (cycles per image side), ``texture_angle``, ``texture_phase``
  and ``texture_contrast`` (amplitude of the brightness modulation).

Shapes are drawn from signed distance functions with a one-pixel linear edge, which
anti-aliases them.  Rendering is a pure function of the factor table (:func:`render`),
so images with chosen factors can be produced on demand; :func:`generate` samples the
factors.  :func:`build` (the registered ``shapes`` source) caches its output as ``.npz``.
"""
from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np

from selfsup.data import DATASETS, Dataset, ImageSet, check_path, default_cache_dir
from selfsup.files import atomic_write

VERSION = 2  # bump whenever the sampling or rendering changes: it keys the cache
CLASSES = ["circle", "ring", "triangle", "square", "star", "cross", "crescent", "heart"]
FACTOR_NAMES = [
    "shape",
    "pos_x",
    "pos_y",
    "scale",
    "rotation",
    "object_hue",
    "object_saturation",
    "object_value",
    "background_hue",
    "background_saturation",
    "background_value",
    "texture_kind",
    "texture_frequency",
    "texture_angle",
    "texture_phase",
    "texture_contrast",
]
TEXTURES = ["flat", "stripes", "checker", "waves"]
DEFAULT_IMAGE_SIZE = 32
DEFAULT_NUM_TRAIN = 10_000
DEFAULT_NUM_TEST = 2_000
_SPLIT_SUBSEEDS = {"train": 0, "test": 1}  # fixed, so the train/test split never moves
_CHUNK = 1024  # images rendered at once; bounds memory at large image sizes


# ----------------------------------------------------------------------------------------
# Signed distance functions.  Inputs are object-frame coordinates (x, y), with the shape
# centred at the origin and fitting (roughly) in the unit circle; y points down.
# Negative inside, positive outside, in object units.


def _box(x, y, half_w, half_h):
    qx, qy = np.abs(x) - half_w, np.abs(y) - half_h
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _polygon(x, y, vertices):
    """Exact distance to a closed polygon, signed by an even-odd inside test."""
    dist2 = np.full(x.shape, np.inf, dtype=x.dtype)
    inside = np.zeros(x.shape, dtype=bool)
    for (ax, ay), (bx, by) in zip(vertices, np.roll(vertices, -1, axis=0)):
        ex, ey = bx - ax, by - ay
        wx, wy = x - ax, y - ay
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0, 1)
        dist2 = np.minimum(dist2, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        if ey != 0:  # a horizontal edge never crosses the ray
            inside ^= ((ay <= y) != (by <= y)) & (x < ax + wy * ex / ey)
    return np.where(inside, -1, 1) * np.sqrt(dist2)


def _regular_star(points, outer, inner):
    """Vertices, shape (2*points, 2), of a star pointing up (towards -y)."""
    angle = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radius = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)


_TRIANGLE = _regular_star(3, 1.0, 0.5)  # inner radius 0.5 puts the midpoints on the edges
_STAR = _regular_star(5, 1.0, 0.45)
_HEART_H = 0.75  # half-diagonal of the heart's diamond; fits the shape in the unit circle
_HEART_Y = 0.1035 * _HEART_H  # shifts the diamond-plus-lobes figure to be centred


def _heart(x, y):
    """A diamond (rotated square) with two discs on its upper edges."""
    c = np.float32(np.sqrt(0.5))
    y = y - _HEART_Y
    diamond = _box(c * (x + y), c * (y - x), c * _HEART_H, c * _HEART_H)
    lobe_y = y + _HEART_H / 2
    lobe_r = c * _HEART_H
    left = np.hypot(x + _HEART_H / 2, lobe_y) - lobe_r
    right = np.hypot(x - _HEART_H / 2, lobe_y) - lobe_r
    return np.minimum(diamond, np.minimum(left, right))


_SDFS = [
    lambda x, y: np.hypot(x, y) - 0.85,  # circle
    lambda x, y: np.abs(np.hypot(x, y) - 0.7) - 0.22,  # ring
    lambda x, y: _polygon(x, y, _TRIANGLE),
    lambda x, y: _box(x, y, 0.72, 0.72),  # square
    lambda x, y: _polygon(x, y, _STAR),
    lambda x, y: np.minimum(_box(x, y, 0.95, 0.3), _box(x, y, 0.3, 0.95)),  # cross
    lambda x, y: np.maximum(np.hypot(x, y) - 0.9, 0.72 - np.hypot(x - 0.45, y)),  # crescent
    _heart,
]
assert len(_SDFS) == len(CLASSES)


# ----------------------------------------------------------------------------------------
# Colour and texture


def _hsv_to_rgb(h, s, v):
    """Vectorised HSV -> RGB; inputs broadcast together, output gains a last axis of 3."""
    h, s, v = (np.asarray(a, dtype=np.float32)[..., None] for a in (h, s, v))
    k = (np.array([5, 3, 1], dtype=np.float32) + 6 * h) % 6  # one k per channel (r, g, b)
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _texture(u, v, kind, freq, angle, phase):
    """Background pattern in [-1, 1], shape (n, S, S); u, v are (S, S) coordinates in [0, 1]."""
    col = lambda a: a[:, None, None]  # noqa: E731  (n,) -> (n, 1, 1) for broadcasting
    cos, sin = np.cos(col(angle)), np.sin(col(angle))
    along = 2 * np.pi * col(freq) * (cos * u + sin * v)  # (n, S, S), phase-free
    across = 2 * np.pi * col(freq) * (cos * v - sin * u)
    stripes = np.sin(along + col(phase))
    checker = np.clip(4 * np.sin(along + col(phase)) * np.sin(across), -1, 1)
    waves = np.sin(along + 1.5 * np.sin(across) + col(phase))
    choices = [np.zeros_like(stripes), stripes, checker, waves]
    return np.select([col(kind) == k for k in range(len(TEXTURES))], choices)


# ----------------------------------------------------------------------------------------
# Sampling and rendering


def sample_factors(n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` rows of factors, shape (n, len(FACTOR_NAMES)) float32."""
    bg_level = rng.uniform(0, 1, n)
    # The object's brightness sits 0.4..0.6 away from the background's on a circle, so
    # their values always differ by at least 0.34 after mapping to [0.15, 1].
    obj_level = (bg_level + rng.uniform(0.4, 0.6, n)) % 1
    columns = {
        "shape": rng.integers(0, len(CLASSES), n),
        "pos_x": rng.uniform(0.3, 0.7, n),
        "pos_y": rng.uniform(0.3, 0.7, n),
        "scale": rng.uniform(0.28, 0.42, n),
        "rotation": rng.uniform(0, 2 * np.pi, n),
        "object_hue": rng.uniform(0, 1, n),
        "object_saturation": rng.uniform(0.4, 1, n),
        "object_value": 0.15 + 0.85 * obj_level,
        "background_hue": rng.uniform(0, 1, n),
        "background_saturation": rng.uniform(0, 0.8, n),
        "background_value": 0.15 + 0.85 * bg_level,
        "texture_kind": rng.integers(0, len(TEXTURES), n),
        "texture_frequency": rng.uniform(1.5, 5, n),
        "texture_angle": rng.uniform(0, np.pi, n),
        "texture_phase": rng.uniform(0, 2 * np.pi, n),
        "texture_contrast": rng.uniform(0.05, 0.2, n),
    }
    return np.stack([columns[name] for name in FACTOR_NAMES], axis=1).astype(np.float32)


def render(factors: np.ndarray, image_size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Render a factor table (n, len(FACTOR_NAMES)) to images (n, S, S, 3) uint8."""
    factors = np.asarray(factors, dtype=np.float32)
    images = np.empty((len(factors), image_size, image_size, 3), dtype=np.uint8)
    for start in range(0, len(factors), _CHUNK):
        images[start : start + _CHUNK] = _render_chunk(factors[start : start + _CHUNK], image_size)
    return images


def _render_chunk(factors: np.ndarray, size: int) -> np.ndarray:
    """:func:`render` for one chunk of rows."""
    f = {name: factors[:, i] for i, name in enumerate(FACTOR_NAMES)}  # each (n,)
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    v, u = np.meshgrid(centres, centres, indexing="ij")  # (S, S): v is the row, u the column

    # Coverage of the shape per pixel, (n, S, S): rotate the pixel offsets into the
    # object's frame, evaluate the shape's distance function, and ramp over one pixel.
    coverage = np.empty((len(factors), size, size), dtype=np.float32)
    shape = f["shape"].astype(int)
    for label, sdf in enumerate(_SDFS):
        rows = np.flatnonzero(shape == label)
        if len(rows) == 0:
            continue
        col = lambda a: a[rows, None, None]  # noqa: E731  (n,) -> (k, 1, 1)
        dx, dy = u - col(f["pos_x"]), v - col(f["pos_y"])  # (k, S, S), image units
        cos, sin = np.cos(col(f["rotation"])), np.sin(col(f["rotation"]))
        x = (cos * dx + sin * dy) / col(f["scale"])
        y = (cos * dy - sin * dx) / col(f["scale"])
        dist_px = sdf(x, y) * col(f["scale"]) * size
        coverage[rows] = np.clip(0.5 - dist_px, 0, 1)

    texture = _texture(
        u, v, f["texture_kind"], f["texture_frequency"], f["texture_angle"], f["texture_phase"]
    )  # (n, S, S)
    level = f["background_value"][:, None, None] + f["texture_contrast"][:, None, None] * texture
    brightness = np.clip(level, 0, 1)  # (n, S, S)
    background = _hsv_to_rgb(f["background_hue"], f["background_saturation"], 1)[:, None, None]
    background = background * brightness[..., None]  # (n, S, S, 3)
    obj = _hsv_to_rgb(f["object_hue"], f["object_saturation"], f["object_value"])[:, None, None]
    alpha = coverage[..., None]  # (n, S, S, 1)
    pixels = alpha * obj + (1 - alpha) * background
    return np.round(pixels * 255).astype(np.uint8)


def generate(
    n: int, *, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0, split: str = "train"
) -> ImageSet:
    """Sample and render ``n`` images of ``split``; deterministic in (seed, split)."""
    rng = np.random.default_rng([seed, _SPLIT_SUBSEEDS[split]])
    factors = sample_factors(n, rng)
    return _image_set(render(factors, image_size), factors, split)


def _image_set(images: np.ndarray, factors: np.ndarray, split: str) -> ImageSet:
    return ImageSet(
        images=images,
        labels=factors[:, 0].astype(np.int64),
        ids=np.array([f"shapes/{split}/{i:06d}" for i in range(len(images))]),
        classes=list(CLASSES),
        factors=factors,
        factor_names=list(FACTOR_NAMES),
    )


# ----------------------------------------------------------------------------------------
# Cache


def _read_cache(file: Path, sizes: dict[str, int], image_size: int) -> dict[str, ImageSet]:
    """Load both splits; raises ValueError (or an I/O error) when the file is not usable."""
    with np.load(file, allow_pickle=False) as npz:
        sets = {}
        for split, n in sizes.items():
            images, factors = npz[f"{split}_images"], npz[f"{split}_factors"]
            expected = (n, image_size, image_size, 3), (n, len(FACTOR_NAMES))
            if (images.shape, factors.shape) != expected:
                raise ValueError(f"unexpected array shapes {images.shape}, {factors.shape}")
            sets[split] = _image_set(images, factors, split)
    return sets


def _write_cache(file: Path, sets: dict[str, ImageSet]) -> None:
    """Write atomically, through selfsup's one write path (:func:`selfsup.files.atomic_write`)."""
    arrays = {}
    for split, s in sets.items():
        arrays[f"{split}_images"], arrays[f"{split}_factors"] = s.images, s.factors
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(file, lambda out: np.savez(out, **arrays))


@DATASETS.register(
    "shapes", help="8 procedurally rendered shapes with random colour, pose and texture (built in)"
)
def build(
    path: str | None = None,
    *,
    image_size: int | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    num_train: int | None = None,
    num_test: int | None = None,
    **_ignored,
) -> Dataset:
    """The ``shapes`` source: generated once per parameter set, then read from the cache.

    ``strict`` and ``download`` have no meaning here and are ignored.
    """
    check_path("shapes", path, required=False)
    image_size = image_size or DEFAULT_IMAGE_SIZE
    sizes = {
        "train": DEFAULT_NUM_TRAIN if num_train is None else num_train,
        "test": DEFAULT_NUM_TEST if num_test is None else num_test,
    }
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = f"v{VERSION}-{image_size}px-seed{seed}-train{sizes['train']}-test{sizes['test']}"
    file = cache / f"shapes-{key}.npz"

    sets = None
    if file.exists():
        try:
            sets = _read_cache(file, sizes, image_size)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            warnings.warn(f"cache file {file} is unreadable ({err}); regenerating it", stacklevel=2)
    if sets is None:
        sets = {
            split: generate(n, image_size=image_size, seed=seed, split=split)
            for split, n in sizes.items()
        }
        try:
            _write_cache(file, sets)
        except OSError as err:
            warnings.warn(f"could not write cache file {file} ({err}); not caching", stacklevel=2)
    return Dataset(name="shapes", train=sets["train"], test=sets["test"])

