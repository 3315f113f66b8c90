"""The command line: user mistakes give one ``error:`` line and exit status 2."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from selfsup.cli import main


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def write_folder(root, n=6, size=12, corrupt=0):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(root / f"img{i}.png")
    for i in range(corrupt):
        (root / f"broken{i}.png").write_bytes(b"not a png at all")
    return root


@pytest.mark.parametrize("flag,value,needles", [
    ("--method", "simclrr", ["unknown method 'simclrr'", "simclr"]),
    ("--backbone", "resnet9000", ["unknown backbone 'resnet9000'", "resnet18", "small_cnn"]),
    ("--data", "imagenet", ["unknown data source 'imagenet'", "shapes", "folder"]),
])
def test_unknown_names_list_the_valid_ones(capsys, tmp_path, flag, value, needles):
    args = ["pretrain", "--epochs", "1", "--num-train", "64", "--out", str(tmp_path), flag, value]
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, *needles)


def test_empty_folder(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "pretrain", "--data", f"folder:{tmp_path / 'empty'}", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "no images found")


def test_batch_too_small_for_contrastive_learning(capsys, tmp_path):
    folder = write_folder(tmp_path / "imgs")
    code, _, err = run_cli(capsys, "pretrain", "--data", f"folder:{folder}", "--batch-size", "1",
                           "--image-size", "16", "--out", str(tmp_path / "r"), "--no-progress")
    assert_one_line_error(code, err, "batch size 1 is too small for simclr")


def test_corrupt_image_skipped_and_counted_or_error_under_strict(capsys, tmp_path):
    folder = write_folder(tmp_path / "imgs", n=8, corrupt=2)
    code, _, err = run_cli(capsys, "pretrain", "--data", f"folder:{folder}", "--strict",
                           "--out", str(tmp_path / "r"), "--no-progress")
    assert_one_line_error(code, err, "broken")
    assert not (tmp_path / "r" / "last.pt").exists()

    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        code, out, err = run_cli(capsys, "pretrain", "--data", f"folder:{folder}", "--batch-size", "4",
                                 "--epochs", "1", "--image-size", "16", "--set", "backbone_cfg.width=8",
                                 "--out", str(tmp_path / "r"), "--no-progress")
    assert code == 0, err
    assert (tmp_path / "r" / "last.pt").is_file()
    assert "8 training images" in out


def test_missing_and_unreadable_checkpoint(capsys, tmp_path):
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path / "nothing.pt"))
    assert_one_line_error(code, err, "not found")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    code, _, err = run_cli(capsys, "evaluate", str(bad))
    assert_one_line_error(code, err, "cannot read", "corrupt")
    code, _, err = run_cli(capsys, "pretrain", "--resume", "--out", str(tmp_path / "no_run"))
    assert_one_line_error(code, err, "not found")


def test_bad_override(capsys, tmp_path):
    code, _, err = run_cli(capsys, "pretrain", "--set", "optim.base_lrr=0.1", "--out", str(tmp_path))
    assert_one_line_error(code, err, "unknown option 'optim.base_lrr'", "base_lr")
    code, _, err = run_cli(capsys, "pretrain", "--set", "method_cfg.temprature=0.1", "--out", str(tmp_path),
                           "--num-train", "64")
    assert_one_line_error(code, err, "no option 'temprature'", "temperature")


def test_list_comes_from_the_registries(capsys):
    from selfsup.models import BACKBONES
    from selfsup.data import DATASETS
    from selfsup.methods import METHODS

    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for name in [*METHODS.names(), *BACKBONES.names(), *DATASETS.names()]:
        assert f"  {name} " in out


def test_help_runs_as_a_program():
    res = subprocess.run([sys.executable, "-m", "selfsup.cli", "pretrain", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    assert "--batch-size" in res.stdout and "--resume" in res.stdout


def test_a_misspelt_method_option_fails_before_any_data_is_read(capsys, tmp_path, monkeypatch):
    import selfsup.api

    def no_data(*a, **k):
        raise AssertionError("data was read before the options were checked")

    monkeypatch.setattr(selfsup.api, "load_data", no_data)
    code, _, err = run_cli(capsys, "pretrain", "--set", "method_cfg.temprature=0.2", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "no option 'temprature'", "did you mean method_cfg.temperature?")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag,value,needle", [
    ("--optimizer", "adamx", "unknown optimizer 'adamx' (did you mean 'adamw'?); valid: adamw, lars, sgd"),
    ("--set", "optim.schedule=cosin", "unknown optim.schedule 'cosin' (did you mean 'cosine'?)"),
    ("--set", "optim.lr_scaling=sqr", "unknown optim.lr_scaling 'sqr' (did you mean 'sqrt'?)"),
    ("--method", "simclrr", "(did you mean 'simclr'?)"),
])
def test_unknown_choices_name_the_closest_one(capsys, tmp_path, flag, value, needle):
    code, _, err = run_cli(capsys, "pretrain", flag, value, "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, needle)


def test_every_choice_the_cli_offers_comes_from_one_table(capsys):
    """The lists in --help and `selfsup list` are the registries' and tables' own."""
    from selfsup.cli import build_parser
    from selfsup.encoders import EXPORT_FORMATS
    from selfsup.eval.label_efficiency import PROTOCOLS
    from selfsup.schedules import LR_SCHEDULES
    from selfsup.train.optim import LR_SCALINGS, OPTIMIZERS

    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for name in [*OPTIMIZERS.names(), *LR_SCALINGS.names(), *LR_SCHEDULES.names()]:
        assert f"  {name} " in out
    assert ", ".join(EXPORT_FORMATS) in out and ", ".join(PROTOCOLS) in out
    helps = {a.dest: a.help for p in build_parser()._subparsers._group_actions[0].choices.values()
             for a in p._actions}
    assert ", ".join(OPTIMIZERS) in helps["optimizer"]
    assert ", ".join(EXPORT_FORMATS) in helps["format"]
