"""The files of a selection (``selfsup select``): what to label, and pictures to check it by.

- ``selection.csv``: one row per chosen sample in the order chosen -- ``rank``, ``index``
  (row of the pool), ``id`` (for a folder the file's path under it; what ``--labelled``
  reads back), ``text`` (text sources), ``cluster`` and ``score`` (the strategy's: k-means
  cluster and typicality for TypiClust, pseudo-class and points newly covered for
  ProbCover, distance to the nearest labelled or chosen point for k-center; empty where
  the strategy has none);
- ``selection.json``: the strategy, budget, seed, the strategy's settings and what it
  measured (``info``), and the chosen ids;
- ``selection.png`` (images): a contact sheet of the chosen images, in rank order, or
  ``selection.md`` (text): the chosen texts;
- ``selection_map.png``: a 2-D map of the pool (a sample of it, with every chosen and
  labelled point) with the chosen points as red stars and the labelled ones as black
  crosses, coloured by class where the pool has labels (only the picture uses them).
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.eval.selection import Pool, SelectionResult
from selfsup.files import atomic_write_text
from selfsup.output import plots

FILES = {"table": "selection.csv", "json": "selection.json", "sheet": "selection.png", "texts": "selection.md",
         "map": "selection_map.png"}
SHEET_MAX = 100  # chosen images shown on the contact sheet
SHEET_COLUMNS = 10


def write_selection(out: str | Path, result: SelectionResult, ids: np.ndarray, samples: Any, features: Any,
                    labelled: np.ndarray, *, about: dict[str, Any] | None = None, projection: str = "tsne",
                    map_samples: int = 2000) -> dict[str, Path]:
    """Write the files above into ``out``; ``samples`` is the pool's split (an ImageSet or
    a TextSet), ``features`` its embeddings (array, tensor or memmap), ``labelled`` the
    mask of rows labelled before, ``about`` extra facts for the JSON (data, encoder)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = result.indices
    texts = getattr(samples, "texts", None)
    paths = {"table": out / FILES["table"], "json": out / FILES["json"]}
    atomic_write_text(paths["table"], _table(result, ids, texts))
    summary = {**(about or {}), **result.info, "ids": [str(i) for i in ids[chosen]]}
    atomic_write_text(paths["json"], json.dumps(summary, indent=2, default=_plain))
    if texts is not None:
        paths["texts"] = out / FILES["texts"]
        _text_list(paths["texts"], result, ids, texts)
    else:
        paths["sheet"] = out / FILES["sheet"]
        _contact_sheet(paths["sheet"], result, samples)
    paths["map"] = out / FILES["map"]
    _pool_map(paths["map"], result, samples, features, labelled, projection, map_samples)
    return paths


def _score(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"


def _table(result: SelectionResult, ids: np.ndarray, texts) -> str:
    buf = io.StringIO()
    table = csv.writer(buf, lineterminator="\n")
    table.writerow(["rank", "index", "id", *(["text"] if texts is not None else []), "cluster", "score"])
    for rank, (i, c, s) in enumerate(zip(result.indices, result.cluster, result.score), 1):
        text = [str(texts[i])] if texts is not None else []
        table.writerow([rank, int(i), str(ids[i]), *text, "" if c < 0 else int(c), _score(s)])
    return buf.getvalue()


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON values; NaN and infinities as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _text_list(path: Path, result: SelectionResult, ids: np.ndarray, texts) -> None:
    info = result.info
    lines = [f"# {len(result.indices)} texts to label next ({info['strategy']}, seed {info['seed']})", ""]
    for rank, (i, c, s) in enumerate(zip(result.indices, result.cluster, result.score), 1):
        facts = ", ".join(f for f in (f"cluster {c}" if c >= 0 else "", f"score {_score(s)}" if _score(s) else "") if f)
        text = " ".join(str(texts[i]).split())
        lines.append(f"{rank}. `{ids[i]}`{f' ({facts})' if facts else ''}: {text}")
    atomic_write_text(path, "\n".join(lines) + "\n")


def _contact_sheet(path: Path, result: SelectionResult, samples) -> None:
    shown = result.indices[:SHEET_MAX]
    images = samples.read(shown)  # (n, H, W, C) in rank order
    rows = [images[s:s + SHEET_COLUMNS] for s in range(0, len(images), SHEET_COLUMNS)]
    titles = [f"#{s + 1}-{s + len(r)}" for s, r in zip(range(0, len(images), SHEET_COLUMNS), rows)]
    more = f", the first {SHEET_MAX} of {len(result.indices)}" if len(result.indices) > SHEET_MAX else ""
    plots.image_grid(rows, titles, path, title=f"to label next: {result.info['strategy']}{more}")


def _pool_map(path: Path, result: SelectionResult, samples, features, labelled: np.ndarray, projection: str,
              map_samples: int) -> None:
    """The pool's 2-D map: a random sample of it plus every chosen and labelled point."""
    n = len(labelled)
    rng = np.random.default_rng(0)
    shown = np.zeros(n, dtype=bool)
    shown[rng.choice(n, size=min(n, map_samples), replace=False)] = True
    shown[result.indices] = True
    shown[labelled] = True
    rows = np.flatnonzero(shown)
    feats = Pool(features).rows(rows).numpy()
    if len(rows) > 10:
        xy = plots.project_2d(feats, projection)
    else:  # too few points for t-SNE's perplexity: principal components
        xy = plots.project_2d(feats, "pca") if len(rows) > 2 else np.c_[np.arange(len(rows)), np.zeros(len(rows))]
    position = np.full(n, -1)
    position[rows] = np.arange(len(rows))
    marked = {f"chosen ({len(result.indices)})": position[result.indices]}
    if labelled.any():
        marked[f"labelled before ({int(labelled.sum())})"] = position[np.flatnonzero(labelled)]
    has_labels = samples.has_labels
    labels = np.asarray(samples.labels)[rows] if has_labels else np.full(len(rows), -1)
    classes = list(samples.classes) if has_labels else []
    plots.embedding_map({f"{projection} of the pool ({len(rows)} of {n} shown)": xy}, labels, classes, path,
                        marked=marked)
