"""One self-contained HTML page per run: what was configured, how training went, what
was measured, and every picture.

:func:`write_report` reads a run folder (as written by ``selfsup pretrain`` and the
evaluation commands) and writes ``RUN/report.html``:

* ``summary``: what a reader came for -- method, backbone and data, how long it trained,
  kNN accuracy against the same encoder at random initialisation and the embedding map
  (``summary.json`` and ``summary_map.png``, which :func:`selfsup.api.report` computes
  when they are missing), or a line saying how to add them;
* ``curves``: training curves drawn from ``metrics.jsonl`` (:func:`selfsup.output.plots.training_curves`);
* ``results``: every other ``*.json`` in the folder (``eval.json``, ``inspect.json``,
  ``label_efficiency.json``, ...): dicts as key/value tables (nested dicts nest), lists
  of dicts as tables with one row each;
* ``images``: every other ``*.png`` in the folder and its sub-folders;
* ``env``: ``env.json`` (versions, hardware) as a table;
* ``config``: ``config.yaml`` as written.

The page needs nothing outside itself: images are embedded as base64 ``data:`` URIs,
styles are inline, and a Content-Security-Policy forbids loading anything else.  One
small inline script marks ``<body data-images-ok="true">`` once every image has
decoded, so a headless browser can check the page (see tests/test_report.py).  All
text from the run folder is HTML-escaped.
"""
from __future__ import annotations

import base64
import html
import json
import math
import tempfile
from pathlib import Path
from typing import Any, Sequence

from selfsup.config import read_run_config
from selfsup.files import atomic_write_text

SECTIONS = ("summary", "curves", "results", "images", "env", "config")
SUMMARY, SUMMARY_MAP = "summary.json", "summary_map.png"
MAX_IMAGE_BYTES = 20 * 2**20  # larger PNGs are listed, not embedded

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'")
_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
.meta { color: #666; font-size: 0.9em; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
table { border-collapse: collapse; margin: 0.4em 0; font-size: 0.88em; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #666; font-size: 0.85em; }
.error { color: #b00020; }
"""
# Runs on load: every image must have decoded to a non-empty bitmap.
_CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var ok = Array.prototype.every.call(document.images, function (im) {
    return im.complete && im.naturalWidth > 0;
  });
  document.body.dataset.imagesOk = ok ? "true" : "false";
  document.body.dataset.imageCount = String(document.images.length);
});
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: Any) -> str:
    """A scalar as short text: floats to 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _cell(value: Any) -> str:
    """One table cell's HTML for any JSON value."""
    if isinstance(value, dict):
        return dict_table(value)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return rows_table(value)
    if isinstance(value, list):
        return _e(", ".join(_fmt(v) for v in value))
    return _e(_fmt(value))


def _td(value: Any) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="num">{_cell(value)}</td>' if numeric else f"<td>{_cell(value)}</td>"


def dict_table(data: dict) -> str:
    """A key/value table; nested dicts and lists of dicts become nested tables."""
    body = "".join(f"<tr><th>{_e(k)}</th>{_td(v)}</tr>" for k, v in data.items())
    return f"<table>{body}</table>"


def rows_table(rows: Sequence[dict]) -> str:
    """A list of records as one table: columns are the union of their keys, in order."""
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(_td(row[c]) if c in row else "<td></td>" for c in cols)
                   + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def json_html(data: Any) -> str:
    """Any JSON value as HTML: a table where it has structure, else escaped text."""
    if isinstance(data, dict):
        return dict_table(data)
    if isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        return rows_table(data)
    return f"<pre>{_e(json.dumps(data, indent=2))}</pre>"


def _png_figure(data: bytes, caption: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (f'<figure><img src="{uri}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _read_json(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(path.read_text()), None
    except (OSError, ValueError) as err:
        return None, f"could not read {path.name}: {err}"


def _summary_section(run: Path) -> str:
    cfg = read_run_config(run)
    data, err = _read_json(run / SUMMARY) if (run / SUMMARY).is_file() else (None, None)
    if not cfg and data is None:
        return ""
    facts = {"method": cfg.get("method"), "backbone": cfg.get("backbone"),
             "data": (cfg.get("data") or {}).get("source"), "epochs": (cfg.get("train") or {}).get("epochs")}
    parts = [dict_table({k: v for k, v in facts.items() if v is not None})]
    if err:
        parts.append(f'<p class="error">{_e(err)}</p>')
    elif data is None:
        parts.append("<p>No evaluation yet: <code>selfsup report RUN</code> computes kNN against random init when "
                     "the run's data has labels; or run <code>selfsup evaluate RUN --data SOURCE</code>.</p>")
    elif "knn_top1" in data:
        parts.append(f"<p>kNN top-1 on {_e(data.get('data'))}: <b>{_fmt(data['knn_top1'])}</b> trained, "
                     f"{_fmt(data.get('random_init_knn_top1'))} for the same encoder at random initialisation.</p>")
    else:
        parts.append(f"<p>{_e(data.get('note', ''))}</p>")
    if (run / SUMMARY_MAP).is_file():
        parts.append(_png_figure((run / SUMMARY_MAP).read_bytes(), "2-D map of the test embeddings by class"))
    return "<h2>Summary</h2>" + "".join(parts)


def _config_section(run: Path) -> str:
    path = run / "config.yaml"
    if not path.exists():
        return ""
    return f"<h2>Configuration</h2><pre>{_e(path.read_text())}</pre>"


def _env_section(run: Path) -> str:
    path = run / "env.json"
    if not path.exists():
        return ""
    data, err = _read_json(path)
    return "<h2>Environment</h2>" + (f'<p class="error">{_e(err)}</p>' if err else json_html(data))


def _curves_section(run: Path) -> str:
    from selfsup.output.plots import read_metrics, training_curves

    path = run / "metrics.jsonl"
    if not path.exists():
        return ""
    try:
        records = read_metrics(path)
    except (OSError, ValueError) as err:
        return f'<h2>Training curves</h2><p class="error">{_e(f"could not read metrics.jsonl: {err}")}</p>'
    if not records:
        return ""
    with tempfile.TemporaryDirectory() as tmp:
        png = training_curves(records, Path(tmp) / "curves.png")
        figure = _png_figure(png.read_bytes(), f"metrics.jsonl: {len(records)} records, "
                                               f"last step {records[-1].get('step', '?')}")
    return "<h2>Training curves</h2>" + figure


def _results_section(run: Path) -> str:
    parts = []
    for path in sorted(run.glob("*.json")):
        if path.name in ("env.json", SUMMARY):
            continue
        data, err = _read_json(path)
        body = f'<p class="error">{_e(err)}</p>' if err else json_html(data)
        parts.append(f"<h3>{_e(path.name)}</h3>{body}")
    return "<h2>Results</h2>" + "".join(parts) if parts else ""


def _images_section(run: Path) -> str:
    parts = []
    for path in sorted(run.rglob("*.png")):
        name = path.relative_to(run).as_posix()
        if name == SUMMARY_MAP:
            continue
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            parts.append(f"<p>{_e(name)}: {size / 2**20:.1f} MiB, too large to embed</p>")
        else:
            parts.append(_png_figure(path.read_bytes(), name))
    return "<h2>Pictures</h2>" + "".join(parts) if parts else ""


_BUILDERS = {"summary": _summary_section, "config": _config_section, "env": _env_section,
             "curves": _curves_section, "results": _results_section, "images": _images_section}


def _title(run: Path) -> str:
    cfg = read_run_config(run)
    try:
        return f"{cfg['method']} on {cfg['data']['source']} ({cfg['backbone']}): {run.resolve().name}"
    except (KeyError, TypeError):
        return run.resolve().name


def write_report(run_dir: str | Path, out_path: str | Path | None = None, *,
                 sections: Sequence[str] = SECTIONS, title: str | None = None) -> Path:
    """Write one self-contained HTML page about the run in ``run_dir``.

    ``out_path`` defaults to ``run_dir/report.html``; ``sections`` picks and orders the
    parts (any of :data:`SECTIONS`; a part whose files are missing is left out);
    ``title`` defaults to the folder's name.  Returns the path written.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"no run folder at {run}")
    unknown = [s for s in sections if s not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown report sections {unknown}; choose from {list(SECTIONS)}")
    out = Path(out_path) if out_path is not None else run / "report.html"
    title = title or _title(run)
    body = "".join(_BUILDERS[s](run) for s in sections)
    body = body or "<p>Nothing to show: the folder has no run files.</p>"
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style>"
        f"<script>{_CHECK_SCRIPT}</script></head>\n"
        f"<body><h1>{_e(title)}</h1><p class=\"meta\">run folder: {_e(run.resolve())}</p>\n"
        f"{body}\n</body></html>\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return out
