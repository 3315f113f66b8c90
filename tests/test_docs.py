"""The documentation: the MkDocs site builds in strict mode (no warning: no broken link or
anchor between pages, no page missing from the nav, no docstring the API reference cannot
read), README.md stays a short front door, and every relative link in README.md and
docs/*.md points to a file that exists (and, into a Markdown page, to a heading it has)."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MAX_README_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
REFERENCE_ID = re.compile(r"^\s{0,3}\[([^\]]+)\]:", re.M)
REFERENCE_USE = re.compile(r"\]\[([^\]]+)\]")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
EXTERNAL = ("http://", "https://", "mailto:", "ftp://")


def without_code(text: str) -> str:
    """The Markdown text with fenced blocks and code spans removed: links there are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    prose = without_code(text)
    return INLINE_LINK.findall(prose) + REFERENCE.findall(prose)


def slugs(heading: str) -> set[str]:
    """The anchors a heading gets on GitHub and from MkDocs' toc extension."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "").strip()
    github = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    mkdocs = re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", ascii_text).strip().lower())
    return {github, mkdocs}


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        found |= slugs(heading)
    return found


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def broken_links(page: Path) -> list[str]:
    base = ROOT if page == README else page.parent
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if target.startswith(EXTERNAL):
            continue
        path, _, anchor = target.partition("#")
        dest = (base / path).resolve() if path else page
        where = f"{page.relative_to(ROOT)}: {target}"
        if not dest.exists():
            broken.append(f"{where} (no file {dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{where} (no heading with anchor #{anchor} in {dest.relative_to(ROOT)})")
    return broken


def test_readme_is_short_and_every_relative_link_resolves():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines, at most {MAX_README_LINES}"
    assert DOCS.is_dir() and (DOCS / "index.md").exists()
    assert sum(len(links(p.read_text(encoding="utf-8"))) for p in pages()) > 50  # the parser finds links
    broken = [b for p in pages() for b in broken_links(p)]
    for page in pages():
        prose = without_code(page.read_text(encoding="utf-8"))
        defined = {d.lower() for d in REFERENCE_ID.findall(prose)}
        broken += [f"{page.relative_to(ROOT)}: [..][{u}] has no definition"
                   for u in REFERENCE_USE.findall(prose) if u.lower() not in defined]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_links_every_number_to_the_docs():
    """Every measured number in the README's results tables is a link into docs/."""
    text = README.read_text(encoding="utf-8")
    results = text[text.index("## Results"):text.index("## Documentation")]
    rows = [line for line in without_code(results).splitlines() if line.startswith("| ") and "---" not in line]
    bare = [cell for row in rows for cell in row.strip("|").split("|")
            if re.search(r"\d\.\d", cell) and "](" not in cell and "][" not in cell]
    assert rows and not bare, f"numbers without a link to the docs: {bare}"


def test_the_site_builds_in_strict_mode(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[test]' installs it)")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # mkdocs-material's notice about MkDocs 2.0
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for page in ("index.html", "results/index.html", "api/index.html", "reliability/index.html"):
        assert (tmp_path / "site" / page).exists(), page
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "pretrain" in api and "nt_xent" in api  # the docstrings were rendered
