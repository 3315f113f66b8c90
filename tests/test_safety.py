"""Never lose a user's work: no silent overwrite, one writer per run folder, stops only at
step boundaries, only finite checkpoints, one-line errors for bad input and failed I/O,
no pickle run on load; and exports that plain torchvision and timm load."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup
from selfsup.cli import main
from selfsup.errors import SelfSupError
from selfsup.eval.knn import knn_accuracy
from selfsup.train import checkpoint, engine
from selfsup.train.safety import RunLock

from test_engine import images, tiny_setup

QUICK = {"train.epochs": 1, "train.batch_size": 16, "data.num_train": 64, "data.image_size": 16,
         "backbone_cfg": {"width": 4}, "train.progress": False}


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *needles):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("safety") / "run"
    selfsup.pretrain("simclr", "shapes", out_dir=str(out), log=lambda s: None, overrides=QUICK)
    return out


# 1, 6: existing runs are never replaced; a failed command changes nothing ------------------


def test_pretrain_refuses_an_existing_run_and_overwrite_replaces_it(run_dir, capsys):
    before = snapshot(run_dir)
    code, _, err = run_cli(capsys, "pretrain", "--out", str(run_dir), "--epochs", "1", "--no-progress")
    one_line_error(code, err, "already holds a run", "--resume", "--overwrite")
    assert snapshot(run_dir) == before


def test_a_failed_resume_leaves_the_run_as_it_was(run_dir, capsys):
    before = snapshot(run_dir)
    code, _, err = run_cli(capsys, "pretrain", "--resume", "--out", str(run_dir), "--method", "moco")
    one_line_error(code, err, "is simclr, not moco")
    code, _, err = run_cli(capsys, "pretrain", "--resume", "--out", str(run_dir), "--batch-size", "100000")
    one_line_error(code, err, "larger than")
    assert snapshot(run_dir) == before


def test_resuming_a_finished_run_says_so(run_dir, capsys):
    before = snapshot(run_dir)
    code, out, err = run_cli(capsys, "pretrain", "--resume", "--out", str(run_dir), "--no-progress")
    assert code == 0 and "nothing to train" in out and "nan" not in out
    assert snapshot(run_dir)["last.pt"] == before["last.pt"]


def test_overwrite_replaces_a_run(tmp_path):
    out = tmp_path / "r"
    selfsup.pretrain("simclr", "shapes", out_dir=str(out), log=lambda s: None, overrides=QUICK)
    (out / "metrics.jsonl").write_text('{"step": 999, "loss": 0}\n')
    assert main(["pretrain", "--out", str(out), "--overwrite", "--epochs", "1", "--num-train", "64", "--image-size",
                 "16", "--batch-size", "16", "--no-progress", "--set", "backbone_cfg={width: 4}"]) == 0
    assert '"step": 999' not in (out / "metrics.jsonl").read_text()


# 2, 9: exports and embeddings ------------------------------------------------------------


def test_export_never_replaces_the_checkpoint_or_an_existing_file(run_dir, capsys, tmp_path):
    before = snapshot(run_dir)
    code, _, err = run_cli(capsys, "export", str(run_dir), "--out", str(run_dir / "last.pt"), "--overwrite")
    one_line_error(code, err, "holds the run or checkpoint being exported")
    code, _, err = run_cli(capsys, "export", str(run_dir), "--format", "hf", "--out", str(run_dir.parent), "--overwrite")
    one_line_error(code, err, "holds the run or checkpoint being exported")
    code, _, err = run_cli(capsys, "export", str(run_dir), "--out", str(run_dir / "encoder.safetensors"))
    one_line_error(code, err, "already exists", "--overwrite")
    code, _, err = run_cli(capsys, "export", str(run_dir), "--out", str(tmp_path))
    one_line_error(code, err, "is a folder")
    assert snapshot(run_dir) == before
    code, _, _ = run_cli(capsys, "pretrain", "--resume", "--out", str(run_dir), "--no-progress")
    assert code == 0  # the run still resumes


def test_embed_refuses_to_replace_embeddings_and_quotes_its_csv(tmp_path, capsys):
    root = tmp_path / "imgs" / "cls"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ['a,b.png', 'say "hi".png', "plain.png"]
    for name in names:
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(root / name)
    enc_file = tmp_path / "e.safetensors"
    selfsup.export_encoder(selfsup.models.create_backbone("small_cnn", in_chans=3, image_size=16, width=4), enc_file)
    out = tmp_path / "emb"
    code, _, err = run_cli(capsys, "embed", str(enc_file), "--data", f"folder:{tmp_path / 'imgs'}", "--out", str(out))
    assert code == 0, err
    with (out / "embeddings.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 4 and all(len(r) == len(rows[0]) for r in rows)
    assert sorted(r[0] for r in rows[1:]) == sorted(f"cls/{n}" for n in names)
    before = snapshot(out)
    code, _, err = run_cli(capsys, "embed", str(enc_file), "--data", f"folder:{tmp_path / 'imgs'}", "--out", str(out))
    one_line_error(code, err, "already holds", "--overwrite")
    assert snapshot(out) == before and not list(out.glob(".embed-*"))


def test_io_failures_are_one_line_and_leave_no_temporary_files(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "pretrain", "--out", str(blocker / "run"), "--no-progress", "--epochs", "1",
                           "--num-train", "64", "--image-size", "16", "--batch-size", "16")
    one_line_error(code, err, "cannot read or write")

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")  # torch.save writes into the file object selfsup opened
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    target = tmp_path / "ckpt.pt"
    with pytest.raises(OSError):
        checkpoint.atomic_save({"a": 1}, target)
    assert list(tmp_path.iterdir()) == [blocker]


# 3, 4, 5: the engine ---------------------------------------------------------------------


def test_sigint_mid_step_checkpoints_at_the_step_boundary_and_resumes_exactly(tmp_path):
    data = images()
    full, cfg = tiny_setup(tmp_path / "full")
    engine.train(full, data, cfg, tmp_path / "full", log=lambda s: None)

    part, cfg = tiny_setup(tmp_path / "part")
    original = part.training_step
    calls = []

    def interrupted_step(x, gen):
        calls.append(1)
        if len(calls) == 3:  # Ctrl-C lands inside step 2, after its forward pass began
            loss = original(x, gen)
            os.kill(os.getpid(), signal.SIGINT)
            return loss
        return original(x, gen)

    part.training_step = interrupted_step
    with pytest.raises(SelfSupError, match="stopped by SIGINT after step 3"):
        engine.train(part, data, cfg, tmp_path / "part", log=lambda s: None)
    assert checkpoint.load_checkpoint(tmp_path / "part")["step"] == 3
    resumed, cfg = tiny_setup(tmp_path / "part")
    engine.train(resumed, data, cfg, tmp_path / "part", resume=True, log=lambda s: None)
    a, b = full.state_dict(), resumed.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_locked_run_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(RunLock, "WAIT", 0.5)
    m, cfg = tiny_setup(tmp_path)
    with RunLock(tmp_path):
        with pytest.raises(SelfSupError, match="another selfsup process is writing"):
            engine.train(m, images(), cfg, tmp_path, log=lambda s: None)
    assert not (tmp_path / "last.pt").exists()
    script = (f"import fcntl, os, time; fd = os.open({str(tmp_path / '.lock')!r}, os.O_RDWR); "
              "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('locked', flush=True); time.sleep(30)")
    other = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"  # another process holds it
        with pytest.raises(SelfSupError, match="another selfsup process"):
            engine.train(m, images(), cfg, tmp_path, log=lambda s: None)
    finally:
        other.kill()
        other.wait()


def test_a_lock_released_within_the_wait_is_taken(tmp_path, monkeypatch):
    """A run resumed right after its job was killed finds the lock still held while the
    dying process is torn down; it waits for it instead of refusing."""
    monkeypatch.setattr(RunLock, "WAIT", 20.0)
    script = (f"import fcntl, os, time; fd = os.open({str(tmp_path / '.lock')!r}, os.O_RDWR | os.O_CREAT); "
              "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('locked', flush=True); time.sleep(1.5)")
    other = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        with RunLock(tmp_path) as lock:
            assert other.poll() is not None  # taken only once the other process had gone
            assert lock.fd is not None
    finally:
        other.kill()
        other.wait()


def test_no_checkpoint_with_non_finite_buffers(tmp_path):
    m, cfg = tiny_setup(tmp_path)
    bn = next(mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    original = m.after_optimizer_step

    def overflowing(step):  # what an exploding learning rate does to BatchNorm statistics, with a finite loss
        original(step)
        if step == 5:
            bn.running_var.fill_(float("inf"))

    m.after_optimizer_step = overflowing
    with pytest.raises(SelfSupError, match="running_var became non-finite by step 8") as err:
        engine.train(m, images(), cfg, tmp_path, log=lambda s: None)
    assert "the last good checkpoint" in str(err.value)
    saved = checkpoint.load_checkpoint(tmp_path)
    assert saved["step"] == 4  # the epoch-1 checkpoint, untouched
    assert all(torch.isfinite(v).all() for v in saved["method_state"].values() if v.is_floating_point())


def test_a_nan_loss_at_the_first_step_does_not_claim_a_checkpoint(tmp_path, capsys):
    code, _, err = run_cli(capsys, "pretrain", "--out", str(tmp_path / "r"), "--no-progress", "--epochs", "1",
                           "--num-train", "64", "--image-size", "16", "--batch-size", "16",
                           "--set", "method_cfg.temperature=0")
    one_line_error(code, err, "no checkpoint was written")


# 7: folders ------------------------------------------------------------------------------


def test_a_symlink_loop_does_not_multiply_the_images(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(root / f"{i}.png")
    (root / "loop").symlink_to(root, target_is_directory=True)
    ds = selfsup.data.create_dataset(f"folder:{root}", cache_dir=tmp_path / "cache")
    assert len(ds.train) == 3
    (root / "notes.txt").write_text("one line\n")
    assert len(selfsup.data.create_dataset(f"text:{root}").train) == 1


# 10: config values and checkpoints --------------------------------------------------------


@pytest.mark.parametrize("option, needle", [
    ("optim.base_lr=-0.1", "optim.base_lr must be positive"),
    ("optim.warmup_epochs=-1", "optim.warmup_epochs must be at least 0"),
    ("train.threads=-1", "train.threads must be at least 0"),
    ("train.log_every=0", "train.log_every must be at least 1"),
    ("data.num_train=0", "data.num_train must be at least 1"),
    ("method_cfg.temperature=warm", "option 'method_cfg.temperature' takes a number, not 'warm'"),
    ("data.num_train=many", "option 'data.num_train' takes a number, not 'many'"),  # a default of None
    ("train.max_steps=1.5", "option 'train.max_steps' takes a whole number, not 1.5"),
])
def test_config_values_that_make_no_sense_are_one_line_errors(option, needle, tmp_path, capsys):
    code, _, err = run_cli(capsys, "pretrain", "--out", str(tmp_path / "r"), "--set", option)
    one_line_error(code, err, needle)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_checkpoints_missing_a_key_or_with_unknown_arguments_are_one_line_errors(run_dir, tmp_path, capsys):
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    broken = dict(ckpt)
    del broken["method_state"]
    torch.save(broken, tmp_path / "a.pt")
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path / "a.pt"))
    one_line_error(code, err, "lacks 'method_state'")
    odd = dict(ckpt, encoder={"name": "small_cnn", "kwargs": {**ckpt["encoder"]["kwargs"], "depth_multiplier": 2}})
    torch.save(odd, tmp_path / "b.pt")
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path / "b.pt"))
    one_line_error(code, err, "does not describe an encoder", "depth_multiplier")
    wider = dict(ckpt, encoder={"name": "small_cnn", "kwargs": {**ckpt["encoder"]["kwargs"],
                                                               "width": 2 * ckpt["encoder"]["kwargs"]["width"]}})
    torch.save(wider, tmp_path / "c.pt")
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path / "c.pt"))
    one_line_error(code, err, "does not describe an encoder", "size mismatch for net.")  # names the first tensor
    resumable = tmp_path / "r"
    resumable.mkdir()
    torch.save({k: v for k, v in ckpt.items() if k != "optimizer"}, resumable / "last.pt")
    code, _, err = run_cli(capsys, "pretrain", "--resume", "--out", str(resumable))
    one_line_error(code, err, "lacks 'optimizer'", "cannot be resumed")


# 11: a corrupt checkpoint, warnings ---------------------------------------------------------


def test_a_corrupt_checkpoint_falls_back_to_the_exported_encoder(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.warns(UserWarning, match="using .*encoder.safetensors"):
        enc = selfsup.load_encoder(copy, device="cpu")
    reference = selfsup.load_encoder(run_dir / "encoder.safetensors", device="cpu")
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(enc(x), reference(x))


def test_cli_warnings_are_one_line(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    (root / "a.txt").write_text("a line\n")
    (root / "b.txt").write_bytes(b"\x00bin")
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # as a user's shell has it (pytest records warnings itself)
    done = subprocess.run([sys.executable, "-m", "selfsup", "pretrain", "--method", "mlm", "--data", f"text:{root}",
                           "--out", str(tmp_path / "r"), "--set", "data.vocab_size=64", "--batch-size", "1",
                           "--epochs", "1", "--no-progress", "--set", "backbone_cfg={layers: 1, hidden: 16, heads: 2}"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    warning = [line for line in done.stderr.splitlines() if "skipped 1 unreadable" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: ") and "UserWarning" not in done.stderr


# 12: kNN on any dtype --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_knn_takes_any_float_dtype(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 8, generator=g)
    y = torch.arange(60) % 3
    x = x + 4 * torch.nn.functional.one_hot(y, 8)[:, :8].float()
    assert knn_accuracy(x.to(dtype), y, x.to(dtype), y) > 0.9


# no pickle is ever run -------------------------------------------------------------------


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_pickle_is_refused_everywhere_and_writes_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "encoder.pt"):
        torch.save({"format": "selfsup-checkpoint", "payload": Evil(str(marker))}, run / name)
    (run / "config.yaml").write_text("method: simclr\n")
    before = snapshot(run)
    commands = [["evaluate", str(run)], ["evaluate", str(run / "encoder.pt")], ["export", str(run), "--out",
                str(tmp_path / "x.safetensors")], ["embed", str(run), "--data", "shapes", "--out", str(tmp_path / "e")],
                ["inspect", str(run)], ["label-efficiency", str(run)], ["pretrain", "--resume", "--out", str(run)]]
    for args in commands:
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and "Traceback" not in err, (args, err)
        assert not marker.exists(), args
    assert snapshot(run) == before
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "e").exists()


# exports into the libraries' own models, library backbones, --init -------------------------


def test_resnet18_export_loads_into_plain_torchvision(tmp_path, capsys):
    import torchvision
    from safetensors.torch import load_file

    torch.manual_seed(0)
    enc = selfsup.models.create_backbone("resnet18", in_chans=3, image_size=32, mean=[0.4, 0.5, 0.6],
                                         std=[0.2, 0.25, 0.3]).eval()
    selfsup.export_encoder(enc, tmp_path / "e.safetensors")
    code, out, err = run_cli(capsys, "export", str(tmp_path / "e.safetensors"), "--format", "torchvision", "--out",
                             str(tmp_path / "tv.safetensors"))
    assert code == 0, err
    assert "m.conv1 = torch.nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)" in out
    how = json.loads((tmp_path / "tv.json").read_text())
    m = torchvision.models.resnet18(weights=None)
    m.conv1 = torch.nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    m.maxpool = torch.nn.Identity()
    m.fc = torch.nn.Identity()
    m.load_state_dict(load_file(tmp_path / "tv.safetensors"))
    m.eval()
    x = torch.rand(4, 3, 32, 32)
    mean, std = torch.tensor(how["mean"]).view(1, 3, 1, 1), torch.tensor(how["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = selfsup.load_encoder(tmp_path / "e.safetensors", device="cpu")(x)
        theirs = m((x - mean) / std)
    assert (ours - theirs).abs().max() < 1e-5


def test_timm_exports_load_into_timm(tmp_path):
    import timm
    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer

    x = torch.rand(2, 3, 16, 16)
    torch.manual_seed(0)
    vit = selfsup.models.create_backbone("vit_tiny", in_chans=3, image_size=16, patch_size=4, depth=2).eval()
    selfsup.export_encoder(vit, tmp_path / "vit.safetensors", format="timm")
    how = json.loads((tmp_path / "vit.json").read_text())
    m = VisionTransformer(img_size=16, patch_size=4, in_chans=3, embed_dim=192, depth=2, num_heads=3, num_classes=0,
                          dynamic_img_size=True).eval()
    m.load_state_dict(load_file(tmp_path / "vit.safetensors"))
    mean, std = torch.tensor(how["mean"]).view(1, 3, 1, 1), torch.tensor(how["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert (vit(x) - m((x - mean) / std)).abs().max() < 1e-5
    net = selfsup.models.create_backbone("timm:resnet10t", in_chans=3, image_size=16).eval()
    selfsup.export_encoder(net, tmp_path / "r.safetensors", format="timm")
    m = timm.create_model("resnet10t", pretrained=False, num_classes=0, in_chans=3).eval()
    m.load_state_dict(load_file(tmp_path / "r.safetensors"))
    with torch.no_grad():
        assert (net(x) - m((x - net.mean) / net.std)).abs().max() < 1e-5
    with pytest.raises(SelfSupError, match="not a torchvision model"):
        selfsup.export_encoder(net, tmp_path / "no.safetensors", format="torchvision")


@pytest.mark.parametrize("backbone", ["timm:resnet10t", "torchvision:mobilenet_v3_small"])
def test_library_backbones_pretrain_and_evaluate(backbone, tmp_path):
    # 32 px: at 16 px these ImageNet-shaped models end on 1x1 maps, where a 16-image batch can
    # give non-finite BatchNorm gradients (the engine's guard then stops the run)
    run = selfsup.pretrain("simclr", "shapes", out_dir=str(tmp_path / "r"), log=lambda s: None,
                           overrides={**QUICK, "backbone": backbone, "backbone_cfg": {}, "data.image_size": 32})
    assert run.encoder.num_features > 0
    res = selfsup.evaluate(run.run_dir, "shapes", linear=False)
    assert 0 <= res["knn_top1"] <= 1 and res["feature_dim"] == run.encoder.num_features


def test_unknown_library_models_are_one_line_errors(tmp_path, capsys):
    code, _, err = run_cli(capsys, "pretrain", "--backbone", "timm:no_such_net", "--out", str(tmp_path / "r"))
    one_line_error(code, err, "timm has no model 'no_such_net'")
    code, _, err = run_cli(capsys, "pretrain", "--backbone", "torchvision:nope", "--out", str(tmp_path / "r"))
    one_line_error(code, err, "torchvision has no classification model 'nope'")


def test_init_starts_an_image_backbone_from_weights_on_disk(tmp_path, capsys):
    import torchvision
    from safetensors.torch import save_file

    tv = torchvision.models.resnet18(weights=None)
    tv.conv1 = torch.nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    save_file({k: v.contiguous() for k, v in tv.state_dict().items()}, str(tmp_path / "tv.safetensors"))
    run = selfsup.pretrain("simclr", "shapes", out_dir=str(tmp_path / "r"), log=lambda s: None,
                           overrides={**QUICK, "backbone": "resnet18", "backbone_cfg": {}, "train.max_steps": 1,
                                      "init": str(tmp_path / "tv.safetensors")})
    assert run.history  # trained from the loaded weights
    state = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert state["config"]["init"].endswith("tv.safetensors")
    torch.save({"fc.weight": torch.zeros(2, 2), "odd.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    code, _, err = run_cli(capsys, "pretrain", "--backbone", "resnet18", "--init", str(tmp_path / "bad.pt"), "--out",
                           str(tmp_path / "r2"), "--image-size", "16", "--num-train", "64")
    one_line_error(code, err, "does not fit", "missing", "unexpected: odd.weight")


# the report leads with the summary; TensorBoard --------------------------------------------


def test_report_leads_with_knn_against_random_init_and_the_map(run_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    page = selfsup.report(run, log=lambda s: None).read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["random_init_knn_top1"] <= 1 and 0 <= summary["knn_top1"] <= 1
    assert (run / "summary_map.png").is_file()
    assert page.index("Summary") < page.index("Training curves") < page.index("Configuration")
    assert "simclr on shapes (small_cnn)" in page and "random initialisation" in page


def test_tensorboard_events_beside_the_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    m, cfg = tiny_setup(tmp_path)
    cfg.train.tensorboard, cfg.train.log_every = True, 2
    engine.train(m, images(), cfg, tmp_path, log=lambda s: None)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("loss")]
    logged = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(logged, rel=1e-6)


def test_an_encoder_with_non_finite_state_is_refused_not_evaluated(tmp_path, capsys):
    enc = selfsup.models.create_backbone("small_cnn", in_chans=3, image_size=16, width=4)
    next(m for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(float("inf"))
    checkpoint.save_encoder_file(tmp_path / "e.safetensors", {"name": enc.name, "kwargs": enc.kwargs},
                                 enc.state_dict())
    code, out, err = run_cli(capsys, "evaluate", str(tmp_path / "e.safetensors"))
    one_line_error(code, err, "holds non-finite values", "running_var")
    assert "knn_top1" not in out


# issue 26: never lose a run, part two ----------------------------------------------------

TINY = ["pretrain", "--data", "digits", "--batch-size", "32", "--no-progress", "--set", "train.monitor_every=0",
        "--set", "train.threads=1"]


def saved_seed(run: Path) -> int:
    import yaml

    seed = checkpoint.load_checkpoint(run)["config"]["train"]["seed"]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == seed  # config and checkpoint agree
    return seed


def test_two_pretrains_started_together_into_one_new_folder_one_wins(tmp_path):
    """1: the second process used to wait for the first one's lock, then delete its run."""
    from forked import assert_one_line_error, run_together

    out = tmp_path / "R"
    results = run_together([TINY + ["--max-steps", "3", "--seed", str(seed), "--out", str(out)] for seed in (1, 2)])
    winners = [seed for seed, r in zip((1, 2), results) if r["code"] == 0]
    assert len(winners) == 1, results
    loser = results[2 - winners[0]]
    assert_one_line_error(loser)
    assert "another selfsup process is writing" in loser["err"] or "already holds a run" in loser["err"], loser
    assert saved_seed(out) == winners[0] and "final loss" in results[winners[0] - 1]["out"]


def test_a_locked_run_folder_is_refused_at_once_and_a_killed_holder_blocks_nothing(tmp_path, capsys):
    """1: no waiting for the lock -- a second writer hears at once; a killed process's lock
    is gone with it (the kernel drops a flock when its holder dies)."""
    import time

    out = tmp_path / "R"
    out.mkdir()
    script = (f"import fcntl, os, time; fd = os.open({str(out / '.lock')!r}, os.O_RDWR | os.O_CREAT); "
              "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        code, _, err = run_cli(capsys, *TINY, "--max-steps", "1", "--out", str(out))
        assert time.monotonic() - t0 < 5
        one_line_error(code, err, "another selfsup process is writing")
        assert [p.name for p in out.iterdir()] == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    code, out_text, err = run_cli(capsys, *TINY, "--max-steps", "1", "--out", str(out))
    assert code == 0 and "final loss" in out_text, err


def limit_file_size(limit: int):
    """A child's setup: every write past ``limit`` bytes of a file fails (EFBIG), as on a full disk."""
    import resource

    def setup():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return setup


def test_a_write_the_disk_refuses_is_one_line_and_a_plain_rerun_is_accepted(tmp_path, capsys):
    """2: torch and safetensors turned the failed write into their own exceptions (a
    traceback), and the folder left by a failed first checkpoint was refused by both
    --resume and a plain rerun."""
    from forked import assert_one_line_error, run_forked

    out = tmp_path / "R"
    args = TINY + ["--max-steps", "2", "--out", str(out)]
    failed = run_forked(args, setup=limit_file_size(100_000))  # config and metrics fit, the checkpoint does not
    assert_one_line_error(failed, "last.pt", "File too large")
    assert not list(out.glob("*.tmp"))
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert checkpoint.load_checkpoint(out)["step"] == 2
    failed = run_forked(["export", str(out), "--out", str(tmp_path / "e.safetensors")], setup=limit_file_size(10_000))
    assert_one_line_error(failed, "e.safetensors", "File too large")
    assert list(tmp_path.iterdir()) == [out]


def test_resume_drops_a_torn_last_metrics_line(tmp_path, capsys):
    """3: a kill -9 during an append leaves half a line; --resume died with JSONDecodeError."""
    out = tmp_path / "R"
    code, _, err = run_cli(capsys, *TINY, "--max-steps", "2", "--out", str(out))
    assert code == 0, err
    lines = (out / "metrics.jsonl").read_text().splitlines()
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "epoch": 0.07, "lo')
    code, _, err = run_cli(capsys, *TINY, "--resume", "--max-steps", "3", "--out", str(out))
    assert code == 0, err
    after = (out / "metrics.jsonl").read_text().splitlines()
    assert after[:-1] == lines and json.loads(after[-1])["step"] == 3


def test_stale_temporary_files_of_dead_processes_are_removed_on_the_next_start(tmp_path, capsys):
    """10: kill -9 during a write left NAME.PID.tmp files (a whole checkpoint each) forever."""
    from forked import dead_pid

    out = tmp_path / "R"
    code, _, err = run_cli(capsys, *TINY, "--max-steps", "1", "--out", str(out))
    assert code == 0, err
    dead = dead_pid()
    stale = [out / f"last.pt.{dead}.tmp", out / f"encoder.safetensors.{dead}.tmp", out / f".embed-{dead}.partial"]
    stale[0].write_bytes(b"PK\x03\x04" + bytes(1000))
    stale[1].write_bytes(b"x")
    stale[2].mkdir()
    (stale[2] / "embeddings.npy").write_bytes(b"x")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        in_use = out / f"eval.json.{alive.pid}.tmp"  # another process is writing it right now
        in_use.write_text("{")
        code, _, err = run_cli(capsys, *TINY, "--resume", "--max-steps", "2", "--out", str(out))
        assert code == 0, err
        assert not any(p.exists() for p in stale) and in_use.exists()
    finally:
        alive.kill()
        alive.wait()


def test_a_run_killed_before_its_first_checkpoint_is_rerun_and_the_messages_agree(tmp_path, capsys):
    """10: such a folder was refused by a plain rerun ("continue it with --resume") and by
    --resume ("checkpoint not found")."""
    from forked import run_forked

    def killed_while_saving():
        def save(obj, f, *a, **k):
            data = b"PK\x03\x04 half a checkpoint"
            f.write(data) if hasattr(f, "write") else Path(f).write_bytes(data)
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = save

    out = tmp_path / "R"
    args = TINY + ["--max-steps", "2", "--out", str(out)]
    assert run_forked(args, setup=killed_while_saving)["code"] == -signal.SIGKILL
    assert (out / "config.yaml").exists() and list(out.glob("last.pt.*.tmp")) and not (out / "last.pt").exists()
    code, _, err = run_cli(capsys, *TINY, "--resume", "--out", str(out))
    one_line_error(code, err, "no checkpoint", "without --resume")
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    assert checkpoint.load_checkpoint(out)["step"] == 2 and not list(out.glob("*.tmp"))


def test_a_folder_with_an_encoder_but_no_checkpoint_is_refused_by_both_with_the_same_advice(tmp_path, capsys):
    """10: the two messages agree -- neither suggests what the other refuses."""
    out = tmp_path / "R"
    out.mkdir()
    enc = selfsup.models.create_backbone("small_cnn", in_chans=1, image_size=8, width=4)
    selfsup.export_encoder(enc, out / "encoder.safetensors")
    before = snapshot(out)
    code, _, err = run_cli(capsys, *TINY, "--max-steps", "1", "--out", str(out))
    one_line_error(code, err, "encoder.safetensors", "no checkpoint to resume", "--overwrite")
    assert "--resume" not in err
    code, _, err = run_cli(capsys, *TINY, "--resume", "--out", str(out))
    one_line_error(code, err, "holds no checkpoint", "encoder.safetensors", "--overwrite")
    assert snapshot(out) == before
