"""``glyphs``: printed letters in real typefaces on coloured, cluttered backgrounds.

Ten classes, the letters A to J, each in upper and lower case (one class per letter, so
``A`` and ``a`` share a label), drawn with the TrueType fonts that matplotlib installs
(DejaVu Sans, Sans Mono and Serif, STIX and Computer Modern, in their bold and italic
styles): a random size (50-85% of the side), position and rotation (+-20 degrees), a
random text colour on a two-colour gradient background with two random distractor
strokes, drawn at twice the side and downsampled (anti-aliased).

Like ``photo_digits`` it exists to measure the methods on data that no default was fitted
to; it was added after ``photo_digits`` had been looked at, and nothing was tuned on it.
The split is by typeface: the test images use five fonts that no training image uses,
so a test score says how well a representation carries over to a new typeface.  Every
(font, letter, case) appears ``VARIANTS`` times (2880 train / 700 test images).
Generation is a pure function of the seed and cheap enough to repeat at every start, so
nothing is cached; ids are ``glyphs/SPLIT/FONT-CHAR-VARIANT``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from selfsup.data import DATASETS, Dataset, ImageSet, check_path, random_subset
from selfsup.errors import SelfSupError

LETTERS = "ABCDEFGHIJ"
VARIANTS = {"train": 9, "test": 7}  # images per (font, letter, case)
DEFAULT_IMAGE_SIZE = 32
GLYPH_SIZE = (0.5, 0.85)  # glyph height as a fraction of the side
MAX_ROTATION = 20.0       # degrees
TRAIN_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmtt10.ttf", "cmti10.ttf",
)
TEST_FONTS = ("DejaVuSans-Oblique.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif-Italic.ttf",
              "STIXGeneralBol.ttf", "cmss10.ttf")


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two background colours and a text colour whose brightness differs from theirs by >= 0.3."""
    while True:
        bg = rng.uniform(0, 1, size=(2, 3))
        fg = rng.uniform(0, 1, size=3)
        if abs(fg.mean() - bg.mean()) >= 0.3:
            return bg[0], bg[1], fg


def _render_one(font_path: Path, char: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """One (side, side, 3) uint8 image of ``char``."""
    from PIL import Image, ImageDraw, ImageFont

    big = 2 * side
    top, bottom, ink = _colour_pair(rng)
    t = np.linspace(0, 1, big, dtype=np.float32)[:, None, None]  # a vertical gradient, or horizontal
    image = (top * (1 - t) + bottom * t) * np.ones((1, big, 1), np.float32)
    if rng.random() < 0.5:
        image = image.transpose(1, 0, 2)
    canvas = Image.fromarray((image * 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(2):  # distractor strokes in random colours
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, big, size=4))
        draw.line((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 256, size=3)),
                  width=int(rng.integers(1, max(2, big // 16))))
    height = rng.uniform(*GLYPH_SIZE) * big
    font = ImageFont.truetype(str(font_path), size=max(8, int(height)))
    x0, y0, x1, y1 = font.getbbox(char)
    glyph = Image.new("L", (x1 - x0 + 4, y1 - y0 + 4), 0)
    ImageDraw.Draw(glyph).text((2 - x0, 2 - y0), char, fill=255, font=font)
    glyph = glyph.rotate(float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)), resample=Image.BILINEAR, expand=True)
    scale = min(1.0, 0.95 * big / max(glyph.size))  # keep it inside the image
    if scale < 1.0:
        glyph = glyph.resize((max(1, int(glyph.width * scale)), max(1, int(glyph.height * scale))), Image.BILINEAR)
    x = int(rng.integers(0, big - glyph.width + 1))
    y = int(rng.integers(0, big - glyph.height + 1))
    colour = Image.new("RGB", glyph.size, tuple(int(round(v * 255)) for v in ink))
    canvas.paste(colour, (x, y), glyph)
    return np.asarray(canvas.resize((side, side), Image.BOX))


def render(split: str, side: int, seed: int = 0, *, letters: str = LETTERS, fonts: tuple[str, ...] | None = None,
           variants: int | None = None, stream: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All images of one split: (images (n, side, side, 3) uint8, labels (n,), ids (n,)).
    ``letters``, ``fonts``, ``variants`` and extra ``stream`` keys for the random generator
    make other sets from the same recipe (benchmarks/tune_twin.py)."""
    fonts = fonts or (TRAIN_FONTS if split == "train" else TEST_FONTS)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, *stream])
    images, labels, ids = [], [], []
    for font in fonts:
        path = font_dir() / font
        for label, letter in enumerate(letters):
            for char in (letter, letter.lower()):
                for v in range(variants or VARIANTS[split]):
                    images.append(_render_one(path, char, side, rng))
                    labels.append(label)
                    ids.append(f"glyphs/{split}/{Path(font).stem}-{char}-{v}")
    return np.stack(images), np.array(labels, np.int64), np.array(ids)


@DATASETS.register("glyphs", help="letters A-J in 21 real typefaces on cluttered colour backgrounds, 32 px, "
                                  "10 classes, test fonts unseen in training (built in; kept out of tuning)")
def build(path: str | None = None, *, image_size: int | None = None, seed: int = 0,
          num_train: int | None = None, num_test: int | None = None, **_ignored) -> Dataset:
    """The ``glyphs`` source; ``num_*`` subsample with ``seed`` (the images themselves are
    always generated from seed 0, so every run sees the same data)."""
    check_path("glyphs", path, required=False)
    missing = [f for f in (*TRAIN_FONTS, *TEST_FONTS) if not (font_dir() / f).is_file()]
    if missing:
        raise SelfSupError(f"glyphs needs matplotlib's bundled fonts; missing {missing[0]} in {font_dir()}: "
                           "reinstall matplotlib")
    side = image_size or DEFAULT_IMAGE_SIZE
    splits = {}
    for split in ("train", "test"):
        images, labels, ids = render(split, side)
        splits[split] = ImageSet(images=images, labels=labels, ids=ids, classes=list(LETTERS))
    return Dataset(name="glyphs", train=random_subset(splits["train"], num_train, seed),
                   test=random_subset(splits["test"], num_test, seed))
