"""The HTML run report: content, escaping, self-containment, and a real browser render."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from selfsup.output.report import write_report  # noqa: E402

HOSTILE = "<script>alert('x')</script> & \"quotes\""


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = {"method": "simclr", "backbone": "small_cnn", "note": HOSTILE,
           "train": {"epochs": 3, "batch_size": 128}, "optim": {"base_lr": 0.3}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (run / "env.json").write_text(json.dumps({"torch": "2.5.0", "python": "3.11", "device": "cpu"}))
    with (run / "metrics.jsonl").open("w") as f:
        for step in range(1, 9):
            f.write(json.dumps({"step": step, "epoch": step / 4, "loss": 4.0 / step, "lr": 0.01 * step,
                                "z_std": 0.6, "collapse_suspected": False}) + "\n")
    (run / "eval.json").write_text(json.dumps({"data": "shapes", "knn_top1": 0.61234567,
                                               "linear_top1": 0.7, "knn_protocol": HOSTILE}))
    (run / "label_efficiency.json").write_text(json.dumps([
        {"fraction": 0.01, "pretrained": 0.41, "scratch": 0.22},
        {"fraction": 0.1, "pretrained": 0.63, "scratch": 0.48}]))
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.scatter(*np.random.default_rng(0).standard_normal((2, 200)), c=np.arange(200), s=8)
    ax.set_title("embedding map")
    fig.savefig(run / "embedding_map.png", dpi=80)
    plt.close(fig)
    return run


def test_report_holds_every_part_escaped_and_self_contained(run_dir):
    out = write_report(run_dir)
    assert out == run_dir / "report.html"
    page = out.read_text()
    for heading in ("Configuration", "Environment", "Training curves", "Results", "Pictures"):
        assert f"<h2>{heading}</h2>" in page
    assert "<h3>eval.json</h3>" in page and "<h3>label_efficiency.json</h3>" in page
    assert "<h3>env.json</h3>" not in page  # env.json has its own section
    assert "0.6123" in page and "<th>scratch</th>" in page  # floats shortened, rows as a table
    assert "batch_size: 128" in page
    # text from the run is escaped: the hostile string never appears raw
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    # self-contained: two images (curves, embedding map), both inline, nothing fetched
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(https?:|//|file:)', page)
    assert "default-src 'none'" in page


def test_report_sections_errors_and_bad_files(run_dir, tmp_path):
    page = write_report(run_dir, tmp_path / "only.html", sections=("results", "config")).read_text()
    assert "<h2>Pictures</h2>" not in page and "Training curves" not in page
    assert page.index("<h2>Results</h2>") < page.index("<h2>Configuration</h2>")
    with pytest.raises(ValueError, match="unknown report sections"):
        write_report(run_dir, sections=("plots",))
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "missing")
    (run_dir / "broken.json").write_text("{not json")
    page = write_report(run_dir).read_text()
    assert "could not read broken.json" in page and "<h3>eval.json</h3>" in page


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium not installed: apt-get install chromium")


def chromium(browser, url, tmp_path, *args):
    """Run headless Chromium once; returns (stdout, stderr).  Page console messages (errors,
    CSP violations) appear in stderr as lines with ':CONSOLE'."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", *args, url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    browser = find_chromium()
    url = write_report(run_dir).resolve().as_uri()

    dom, err = chromium(browser, url, tmp_path, "--dump-dom")
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-images-ok="true"' in body and 'data-image-count="2"' in body, body
    assert console_lines(err) == []

    shot = tmp_path / "shot.png"
    _, err = chromium(browser, url, tmp_path, f"--screenshot={shot}", "--window-size=1200,2000")
    assert console_lines(err) == []
    assert shot.stat().st_size > 20_000
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1200)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, tables and plots, not blank


def test_the_browser_check_catches_broken_pictures_and_outside_resources(tmp_path):
    """Negative control: the same checks fail for a page with an undecodable image, a
    script error and an external image (blocked by the report's policy)."""
    browser = find_chromium()
    page = write_report(tmp_path).read_text()  # an empty folder: the bare page, script included
    extra = ('<img src="data:image/png;base64,AAAA"><img src="https://example.invalid/x.png">'
             "<script>missing()</script></body>")
    bad = page.replace("</body>", extra)
    (tmp_path / "bad.html").write_text(bad)
    dom, err = chromium(browser, (tmp_path / "bad.html").as_uri(), tmp_path, "--dump-dom")
    assert 'data-images-ok="false"' in re.search(r"<body[^>]*>", dom).group(0)
    lines = "\n".join(console_lines(err))
    assert "Uncaught ReferenceError" in lines and "Content Security Policy" in lines
