"""A tuning twin of `glyphs`: candidates for the presets are tried here, so `glyphs` stays held out.

Same generator as `glyphs` (`selfsup.data.glyphs`), other letters (KLMNPRSTUY), trained
on 12 of `glyphs`' 16 training typefaces and tested on the other 4, so no `glyphs` test
typeface is ever seen; its random stream is `glyphs`' seed with a third key, so no image
repeats one of `glyphs`' images.  One run per call: pretrain METHOD with its `cpu` preset
plus any --set overrides, then kNN / linear probe against the same backbone at random
init, on one thread; the result is printed and appended to WORK/twin.jsonl.

    python benchmarks/tune_twin.py moco --seed 0 --set train.batch_size=64

`--source` runs the same on a built-in source instead (e.g. photo_digits@16).  The README's
"what was tried" numbers on the twin come from this script.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

import selfsup
from selfsup.data import Dataset, ImageSet
from selfsup.data import glyphs
from selfsup.eval.label_efficiency import fresh_copy

LETTERS = "KLMNPRSTUY"
TEST_FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "STIXGeneralItalic.ttf", "cmtt10.ttf")
TRAIN_FONTS = tuple(f for f in glyphs.TRAIN_FONTS if f not in TEST_FONTS)
VARIANTS = {"train": 12, "test": 9}  # images per (font, letter, case): 2880 train / 720 test


def twin(work: Path) -> Dataset:
    cache = work / "twin.npz"
    if not cache.exists():
        (a, b, _), (c, d, _) = (glyphs.render(split, 32, letters=LETTERS, variants=VARIANTS[split], stream=(1,),
                                              fonts=TRAIN_FONTS if split == "train" else TEST_FONTS)
                                for split in ("train", "test"))
        np.savez(cache, a=a, b=b, c=c, d=d)
    z = np.load(cache)

    def part(images, labels, split):
        return ImageSet(images=images, labels=labels, ids=np.array([f"twin/{split}/{i}" for i in range(len(labels))]),
                        classes=list(LETTERS))

    return Dataset(name="glyphs_twin", train=part(z["a"], z["b"], "train"), test=part(z["c"], z["d"], "test"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("method")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override (repeatable)")
    p.add_argument("--source", default=None, help="a built-in source NAME[@SIZE] instead of the twin")
    p.add_argument("--work", default="runs/tune_twin")
    a = p.parse_args()
    torch.set_num_threads(1)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    name, _, size = (a.source or "").partition("@")
    data = name if a.source else twin(work)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}
    t0 = time.perf_counter()
    run = selfsup.pretrain(a.method, data, overwrite=True, image_size=int(size) if size else None, seed=a.seed,
                           out_dir=str(work / "run"), progress=False, log=lambda s: None, overrides=overrides)
    seconds = time.perf_counter() - t0
    res = selfsup.evaluate(run.encoder, data)
    rnd = selfsup.evaluate(fresh_copy(run.encoder.cpu(), a.seed), data)
    line = {"method": a.method, "source": a.source or "glyphs_twin", "seed": a.seed, "set": a.set,
            "knn": round(res["knn_top1"], 3), "linear": round(res["linear_top1"], 3),
            "random_knn": round(rnd["knn_top1"], 3), "random_linear": round(rnd["linear_top1"], 3),
            "seconds": round(seconds), "threads": 1, "torch": torch.__version__}
    print(json.dumps(line), flush=True)
    with (work / "twin.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
