"""Hostile input files (issue 26, part two): FIFOs, broken links, files replaced in place,
huge CSV cells, folders too small to hold out a test split, an empty tokenizer and a
pickled ``--init`` model.  Each ends in a skipped-and-counted file or a one-line error,
never a hang, a traceback or a NaN."""
from __future__ import annotations

import csv
import os
import pickle
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from selfsup.data import create_dataset, folder
from selfsup.errors import SelfSupError

from test_cli import assert_one_line_error, run_cli

HANG = 20  # seconds after which a read that should never block counts as hung


def _images(root, n=4, size=8, fmt="png"):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(root / f"img{i}.{fmt}")
    return root


def _without_hanging(fn, fifos=()):
    """``fn()``'s result and warnings, failing (not hanging) when it blocks for HANG seconds;
    a reader stuck on one of ``fifos`` is then released by opening it for writing."""
    result = {}

    def target():
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result["value"] = fn()
            result["warnings"] = [str(w.message) for w in caught]
        except BaseException as err:  # handed to the test's thread
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG)
    if thread.is_alive():
        for fifo in fifos:  # a writer that opens and closes gives the blocked reader an end of file
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        thread.join(HANG)
        pytest.fail(f"reading the data blocked for {HANG} s (a FIFO was opened)")
    if "error" in result:
        raise result["error"]
    return result["value"], result["warnings"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_case_4_a_fifo_is_skipped_and_a_half_built_cache_is_cleaned(tmp_path, monkeypatch):
    root = _images(tmp_path / "imgs")
    os.mkfifo(root / "pipe.png")
    cache_dir = tmp_path / "cache"
    # a build killed before it finished left its temporary folder behind
    target = folder._cache_folder(root.resolve(), 16, cache_dir)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = target.with_name(f"{target.name}.{dead.pid}.tmp")
    (leftover / "train.u8").parent.mkdir(parents=True)
    (leftover / "train.u8").write_bytes(b"\0" * 100)

    ds, messages = _without_hanging(
        lambda: create_dataset(f"folder:{root}", image_size=16, cache_dir=cache_dir, progress=False),
        fifos=[root / "pipe.png"])
    assert len(ds.train) == 4
    assert any("skipped 1 unreadable" in m and "pipe.png" in m and "not a regular file" in m for m in messages), \
        messages
    assert not leftover.exists()
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    with pytest.raises(SelfSupError, match="pipe.png"):
        _without_hanging(lambda: create_dataset(f"folder:{root}", image_size=16, cache_dir=cache_dir,
                                                strict=True, progress=False), fifos=[root / "pipe.png"])

    # a build interrupted part-way (Ctrl-C) leaves no half-built folder
    (root / "img4.png").write_bytes((root / "img0.png").read_bytes())
    decode, calls = folder._try_decode, []

    def interrupted(file, size, *plan):
        calls.append(file)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return decode(file, size, *plan)

    monkeypatch.setattr(folder, "_try_decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        create_dataset(f"folder:{root}", image_size=16, cache_dir=cache_dir, progress=False)
    assert [p.name for p in target.parent.iterdir()] == [target.name]

    # a text folder skips a FIFO the same way
    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text("one line\nanother line\n")
    os.mkfifo(text / "pipe.txt")
    ds, messages = _without_hanging(lambda: create_dataset(f"text:{text}", cache_dir=cache_dir),
                                    fifos=[text / "pipe.txt"])
    assert len(ds.train) == 2 and any("skipped 1 unreadable" in m and "pipe.txt" in m for m in messages), messages


def test_case_5_an_image_replaced_in_place_with_size_and_mtime_kept_is_cached_again(tmp_path):
    root = _images(tmp_path / "imgs", fmt="bmp")  # BMP: the same size in bytes whatever the pixels
    cache_dir = tmp_path / "cache"
    first = create_dataset(f"folder:{root}", image_size=8, cache_dir=cache_dir, progress=False)
    target = root / "img0.bmp"
    idx = list(first.train.ids).index("img0.bmp")
    for value, how in ((255, "rewritten"), (7, "renamed")):
        before = os.stat(target)
        new = tmp_path / "new.bmp"
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(new)
        assert new.stat().st_size == before.st_size
        if how == "rewritten":  # same file (inode), new bytes
            with open(target, "r+b") as f:
                f.write(new.read_bytes())
        else:  # a new file renamed over the old one
            os.replace(new, target)
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = os.stat(target)
        assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again = create_dataset(f"folder:{root}", image_size=8, cache_dir=cache_dir, progress=False)
        assert any("changed since it was cached" in str(w.message) for w in caught), how
        np.testing.assert_array_equal(again.train.read([idx])[0], np.full((8, 8, 3), value, np.uint8))


def test_case_6_a_csv_cell_longer_than_the_csv_module_default_is_read(tmp_path):
    long = "word " * 30_000  # 150,000 characters, over csv's default field limit of 131,072
    file = tmp_path / "data.csv"
    file.write_text("text,label\n" + "".join(f"sentence number {i},a\n" for i in range(5)) + f'"{long}",b\n')
    limit = csv.field_size_limit()
    ds = create_dataset(f"text:{file}", cache_dir=tmp_path / "cache")
    assert len(ds.train) == 6 and long.strip() in list(ds.train.texts)
    assert ds.train.classes == ["a", "b"]
    assert csv.field_size_limit() == limit  # the process-wide limit is left as it was


def test_case_7_a_folder_too_small_to_hold_out_a_test_split_is_a_one_line_error(capsys, tmp_path):
    from selfsup.encoders import export_encoder
    from selfsup.models import create_backbone

    data = tmp_path / "imgs"
    for c in ("cat", "dog"):
        _images(data / c, n=2)
    create_dataset(f"folder:{data}", image_size=8, progress=False)  # cached now: no progress bar below
    enc = create_backbone("small_cnn", in_chans=3, image_size=8, mean=[0.5] * 3, std=[0.25] * 3, width=4)
    exported = export_encoder(enc, tmp_path / "enc.safetensors")
    code, out, err = run_cli(capsys, "evaluate", str(exported), "--data", f"folder:{data}", "--no-linear",
                             "--out", str(tmp_path / "eval.json"))
    assert_one_line_error(code, err, "too few", "3 images per class", "test")
    assert "NaN" not in out and not (tmp_path / "eval.json").exists()
    code, out, err = run_cli(capsys, "label-efficiency", str(exported), "--data", f"folder:{data}",
                             "--seeds", "1", "--fractions", "1.0", "--protocols", "knn",
                             "--out", str(tmp_path / "le"))
    assert_one_line_error(code, err, "too few", "3 images per class")
    assert not (tmp_path / "le").exists() or not any((tmp_path / "le").iterdir())


def test_case_8_dangling_and_looping_links_are_skipped_and_counted(capsys, tmp_path):
    root = _images(tmp_path / "imgs")
    (root / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (root / "loop.png").symlink_to(root / "loop.png")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable .*(dangling|loop)\.png"):
        ds = create_dataset(f"folder:{root}", image_size=8, cache_dir=tmp_path / "cache", progress=False)
    assert len(ds.train) == 4
    with pytest.raises(SelfSupError, match=r"(dangling|loop)\.png"):
        create_dataset(f"folder:{root}", image_size=8, cache_dir=tmp_path / "cache", progress=False, strict=True)
    # labelled: a broken link among the class folders is skipped too
    labelled = tmp_path / "labelled"
    _images(labelled / "a", n=2)
    _images(labelled / "b", n=2)
    (labelled / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable .*gone\.png"):
        ds = create_dataset(f"folder:{labelled}", image_size=8, cache_dir=tmp_path / "cache", progress=False)
    assert len(ds.train) == 4 and ds.train.classes == ["a", "b"]
    # text folders likewise
    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text("one line\nanother line\n")
    (text / "dangling.txt").symlink_to(tmp_path / "nowhere.txt")
    (text / "loop.txt").symlink_to(text / "loop.txt")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable file\(s\)"):
        ds = create_dataset(f"text:{text}", cache_dir=tmp_path / "cache")
    assert len(ds.train) == 2


def _tiny_bert_folder(path):
    from selfsup.data.tokenizer import Tokenizer
    from selfsup.models.text import bert

    tok = Tokenizer.train(["hello world and more words"] * 10, 64)
    bert(tokenizer=tok, layers=1, hidden=16, heads=2, max_length=16).save_pretrained(path)
    return path


class _Payload:
    """Unpickling this runs code: it creates the file named ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_case_12_an_empty_tokenizer_and_a_pickled_init_model_are_one_line_errors(capsys, tmp_path):
    from tokenizers import Tokenizer as Backend, models

    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("hello world\nmore words here\n" * 4)
    common = ["pretrain", "--method", "mlm", "--data", f"text:{texts}", "--max-steps", "1", "--batch-size", "4",
              "--max-length", "16", "--no-progress"]

    # a tokenizer.json with no vocabulary beyond its special tokens
    empty = Backend(models.WordPiece(vocab={}, unk_token="[UNK]"))
    empty.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    empty.save(str(tmp_path / "tokenizer.json"))
    code, _, err = run_cli(capsys, *common, "--tokenizer", str(tmp_path / "tokenizer.json"),
                           "--out", str(tmp_path / "r1"))
    assert_one_line_error(code, err, "tokenizer.json", "vocabulary")
    assert not (tmp_path / "r1" / "last.pt").exists()

    # an --init folder whose weights are a pickle that would run code: refused, never run
    model = _tiny_bert_folder(tmp_path / "model")
    (model / "model.safetensors").unlink()
    marker = tmp_path / "pickle-ran"
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = run_cli(capsys, *common, "--init", str(model), "--out", str(tmp_path / "r2"))
    assert_one_line_error(code, err, "pytorch_model.bin", "safetensors")
    assert not [w for w in caught if "pickle" in str(w.message)]  # the CLI would print them as more lines
    assert not marker.exists()
    assert not (tmp_path / "r2" / "last.pt").exists()
