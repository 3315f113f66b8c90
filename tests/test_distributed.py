"""Two gloo processes on the CPU against one process on the concatenated batch: the loss
and every parameter's gradient (after DDP's averaging) must agree.  BatchNorm runs on its
running statistics (eval mode) and the views are a fixed function of each image, so the
comparison is exact up to float rounding."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.config import RunConfig
from selfsup.methods import METHODS as REGISTRY

WORLD = 2
BATCH = 8  # the global batch: 4 images per process


METHODS = REGISTRY.names()  # every registered method, also those added later
OPTIONS = {"moco": {"queue_size": 64}, "dino": {"out_dim": 64, "n_local": 2},  # smaller than the defaults
           "distill": {"loss": "both", "queue_size": 64, "hidden_dim": 32}}  # both losses: the SEED queue is gathered
# each method runs on its cpu preset's backbone (small_cnn unless the preset names one), made small
BACKBONE_OPTIONS = {"small_cnn": {"width": 4}, "vit_mae_tiny": {"patch_size": 4, "depth": 1},
                    "bert": {"max_length": 16, "layers": 1, "hidden": 32, "heads": 2}}


def assert_ranks_match_one(out: str, loss: torch.Tensor, want: dict) -> None:
    """The WORLD ranks' saved losses average to the single process's ``loss`` and every
    rank's gradients equal its ``want`` (the files ``out.format(rank=r)``)."""
    got = [torch.load(out.format(rank=r), weights_only=True) for r in range(WORLD)]
    assert torch.stack([g["loss"] for g in got]).mean().item() == pytest.approx(loss.item(), abs=1e-6)
    for g in got:
        assert g["grads"].keys() == want.keys()
        for name, grad in want.items():
            assert (g["grads"][name] - grad).abs().max() < 1e-6, name


def small_teacher() -> dict:
    """distill's teacher: a small_cnn export written here (the same weights in every
    process: a fixed seed) and read back as ``--teacher`` reads it."""
    import tempfile

    from selfsup.encoders import export_encoder, load_teacher
    from selfsup.models import create_backbone

    torch.manual_seed(1)
    with tempfile.TemporaryDirectory() as folder:
        path = export_encoder(create_backbone("small_cnn", in_chans=3, image_size=16, width=4),
                              f"{folder}/teacher.safetensors")
        return {"teacher": load_teacher(str(path))}


RESOURCES = {"distill": small_teacher}  # modules a method takes already built, made per process


def backbone_of(method: str) -> str:
    return REGISTRY.get(method).presets.get("cpu", {}).get("backbone", RunConfig().backbone)


def build(method: str):
    from selfsup.methods import create_method
    from selfsup.models import create_backbone, modality

    torch.manual_seed(0)
    name = backbone_of(method)
    options = BACKBONE_OPTIONS.get(name, {})
    if modality(name) == "text":
        enc = create_backbone(name, tokenizer=tokens()[1], **options)
    else:
        enc = create_backbone(name, in_chans=3, image_size=16, **options)
    m = create_method(method, enc, OPTIONS.get(method, {}), image_size=16, channels=3,
                      **RESOURCES.get(method, dict)())
    m.setup_schedules(10, 5)
    # float64 so that the only difference left is the order of sums; BatchNorm on running
    # statistics: per-sample, the same in any split of the batch
    return m.double().eval()


def fixed_views(module, setattr=setattr):
    """Replace the method module's random views by fixed functions of each sample: the
    first view of a step is the image, the second its mirror; MLM masks the second real
    token of every sentence (so every rank scores as many tokens)."""
    calls = []

    def augment(x, cfg, generator):
        calls.append(1)
        return x if len(calls) % 2 else x.flip(-1)

    def mask_tokens(ids, generator, *, mask_id, **_):
        labels = torch.full_like(ids, -100)
        labels[:, 1] = ids[:, 1]
        return torch.where(labels != -100, torch.full_like(ids, mask_id), ids), labels

    if hasattr(module, "augment"):
        setattr(module, "augment", augment)
    if hasattr(module, "mask_tokens"):
        setattr(module, "mask_tokens", mask_tokens)


def module(method: str) -> str:
    """The module a method's class lives in."""
    return REGISTRY.get(method).__module__


def tokens():
    from selfsup.data import create_dataset

    ds = create_dataset("lang", num_train=200, num_test=10, text=_text_options())
    return torch.from_numpy(ds.train.tokens[:BATCH, :16]).long(), ds.train.tokenizer


def _text_options():
    from selfsup.data.text import TextOptions

    return TextOptions(max_length=16, vocab_size=200)


def batch(method: str) -> torch.Tensor:
    from selfsup.models import modality

    if modality(backbone_of(method)) == "text":
        return tokens()[0]
    return torch.rand(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def generator(method: str, m, rank: int, share: int) -> torch.Generator:
    """The step's generator.  MAE's mask noise and the denoising autoencoder's masking are
    one (N, L) / (N, C*H*W) uniform draw each, so rank r first skips the rows of the ranks
    before it and gets exactly the rows one process would give its images."""
    gen = torch.Generator().manual_seed(0)
    per_sample = {"mae": lambda: m.num_patches, "denoising_autoencoder": lambda: 3 * 16 * 16}
    if method in per_sample and rank:
        torch.rand(rank * share, per_sample[method](), generator=gen)
    return gen


def gradients(m) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in m.trainable_parameters() if p.grad is not None}


def join(rank: int, init_file: str) -> None:
    """Make this spawned process rank ``rank`` of a 2-process gloo group, as torchrun would."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)


def worker(rank: int, method: str, init_file: str, out: str) -> None:
    import importlib

    from selfsup import distributed

    join(rank, init_file)
    try:
        fixed_views(importlib.import_module(module(method)))
        m = build(method)
        step = distributed.training_step(m, torch.device("cpu"))
        share = BATCH // WORLD
        loss, _ = step(batch(method)[rank * share:(rank + 1) * share], generator(method, m, rank, share))
        loss.backward()
        torch.save({"loss": loss.detach(), "grads": gradients(m)}, out.format(rank=rank))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_match_one_on_the_joint_batch(method, tmp_path, monkeypatch):
    import importlib

    fixed_views(importlib.import_module(module(method)), monkeypatch.setattr)  # undone after
    m = build(method)
    loss, _ = m.training_step(batch(method), generator(method, m, 0, BATCH))
    loss.backward()
    want = gradients(m)

    out = str(tmp_path / "rank{rank}.pt")
    mp.spawn(worker, args=(method, str(tmp_path / "init"), out), nprocs=WORLD, join=True)
    assert_ranks_match_one(out, loss, want)


def test_torchrun_moco_killed_and_resumed_equals_uninterrupted(tmp_path, capsys):
    """``torchrun --standalone --nproc_per_node=2 -m selfsup pretrain --method moco``, killed
    with SIGKILL after a mid-run checkpoint and resumed, ends with the weights of an
    uninterrupted 2-process run; the queue is the same on both ranks."""
    import signal
    import subprocess
    import sys
    import time

    from selfsup.data import create_dataset

    create_dataset("shapes", num_train=128, num_test=64, image_size=16)  # cached before two processes read it
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "selfsup"]
    args = ["pretrain", "--method", "moco", "--data", "shapes", "--num-train", "128", "--image-size", "16",
            "--batch-size", "16", "--epochs", "25", "--no-progress", "--set", "method_cfg.queue_size=64",
            "--set", "backbone_cfg={width: 4}", "--set", "train.checkpoint_every=2", "--set", "train.threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(out, *extra):
        done = subprocess.run([*torchrun, *args, "--out", str(out), *extra], capture_output=True, text=True, env=env,
                              timeout=300)
        errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
        assert done.returncode == 0, "\n".join(errors[:5]) + "\n" + done.stderr[-1500:]
        return done

    run(tmp_path / "full")
    job = subprocess.Popen([*torchrun, *args, "--out", str(tmp_path / "part")], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "part" / "last.pt"
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpt.exists() and torch.load(ckpt, weights_only=True)["step"] >= 6):
        time.sleep(0.2)
    # the whole job, mid-run: torchrun starts its workers in sessions of their own, so they
    # are found by their command line (which names the run folder) rather than by group
    part = str(tmp_path / "part").encode()
    while (left := [pid for pid, cmd in command_lines().items() if part in cmd]) or job.poll() is None:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):  # it may have died since it was listed
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    stopped_at = torch.load(ckpt, weights_only=True)["step"]
    assert 6 <= stopped_at < 100, stopped_at  # 4 steps per epoch (128 images / 2 ranks / 16), 100 in all
    run(tmp_path / "part", "--resume")
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["step"] == b["step"] == 100 and a["data_position"]["world_size"] == 2
    for k in a["method_state"]:
        assert torch.equal(a["method_state"][k], b["method_state"][k]), k
    from selfsup.cli import main  # one process cannot continue a 2-process run, and says why

    capsys.readouterr()
    assert main(["pretrain", "--resume", "--out", str(tmp_path / "part"), "--epochs", "30", "--no-progress"]) == 2
    assert "trained with 2 process(es), this job has 1" in capsys.readouterr().err


def command_lines() -> dict[int, bytes]:
    """Every live process's command line, by pid."""
    out = {}
    for proc in Path("/proc").iterdir():
        try:
            out[int(proc.name)] = (proc / "cmdline").read_bytes()
        except (ValueError, OSError):
            continue
    return out


def text_distill(folder: str):
    """distill on text, float64 in eval mode, its teacher cache filled: the student a one-layer
    BERT with the tokenizer saved in ``folder``, the teacher the BERT folder there (a tokenizer
    of its own); both written once by the test, so every process reads the same."""
    from selfsup.data import create_dataset
    from selfsup.data.text import TextOptions
    from selfsup.data.tokenizer import Tokenizer
    from selfsup.encoders import load_teacher
    from selfsup.methods import create_method
    from selfsup.models import create_backbone

    tok = Tokenizer.from_json((Path(folder) / "student.json").read_text())
    ds = create_dataset("lang", num_train=BATCH, num_test=4, text=TextOptions(tokenizer=tok, max_length=16))
    torch.manual_seed(0)
    enc = create_backbone("bert", tokenizer=tok, **BACKBONE_OPTIONS["bert"])
    m = create_method("distill", enc, {**OPTIONS["distill"], "cache": True}, teacher=load_teacher(f"{folder}/teacher"))
    m.setup_schedules(10, 5)
    m = m.double().eval()
    with torch.no_grad():
        m.prepare(ds.train, torch.device("cpu"))
    return m, torch.from_numpy(ds.train.tokens).long()


def text_distill_worker(rank: int, folder: str, init_file: str, out: str) -> None:
    from selfsup import distributed
    from selfsup.methods import distill

    join(rank, init_file)
    try:
        distill.drop_words = lambda texts, p, generator: list(texts)  # the whole texts: a fixed view
        m, x = text_distill(folder)
        share = BATCH // WORLD
        rows = torch.arange(rank * share, (rank + 1) * share)  # this rank's global sample indices
        step = distributed.training_step(m, torch.device("cpu"))  # held: DDP's backward needs it
        loss, _ = step(x[rows], torch.Generator().manual_seed(0), index=rows)
        loss.backward()
        torch.save({"loss": loss.detach(), "grads": gradients(m)}, out.format(rank=rank))
    finally:
        dist.destroy_process_group()


def test_text_distill_two_processes_match_one_on_the_joint_batch(tmp_path, monkeypatch):
    """distill on text as the engine runs it under torchrun: each rank looks its share of the
    batch up in the teacher cache by global sample index; the SEED queue and the centre are
    gathered.  The loss and every gradient equal one process's on the joint batch."""
    from selfsup.data import create_dataset
    from selfsup.data.text import TextOptions
    from selfsup.encoders import export_encoder
    from selfsup.methods import distill
    from selfsup.models import create_backbone

    student = tokens()[1]
    (tmp_path / "student.json").write_text(student.to_json())
    teacher_tok = create_dataset("lang", num_train=64, num_test=4, text=TextOptions(vocab_size=150)).train.tokenizer
    torch.manual_seed(2)
    export_encoder(create_backbone("bert", tokenizer=teacher_tok, max_length=32, layers=1, hidden=32, heads=2),
                   tmp_path / "teacher", format="hf")
    monkeypatch.setattr(distill, "drop_words", lambda texts, p, generator: list(texts))
    m, x = text_distill(str(tmp_path))
    loss, _ = m.training_step(x, torch.Generator().manual_seed(0), index=torch.arange(BATCH))
    loss.backward()
    want = gradients(m)

    out = str(tmp_path / "rank{rank}.pt")
    mp.spawn(text_distill_worker, args=(str(tmp_path), str(tmp_path / "init"), out), nprocs=WORLD, join=True)
    assert_ranks_match_one(out, loss, want)


def train_worker(rank: int, method: str, init_file: str, out: str, run_dir: str) -> None:
    import numpy as np

    from selfsup.config import RunConfig
    from selfsup.methods import create_method
    from selfsup.models import create_backbone
    from selfsup.train import engine

    join(rank, init_file)
    try:
        torch.manual_seed(0)
        enc = create_backbone("small_cnn", in_chans=3, image_size=16, width=4)
        m = create_method(method, enc, OPTIONS[method], image_size=16, channels=3)
        cfg = RunConfig(method=method)
        cfg.train.epochs, cfg.train.batch_size, cfg.train.progress = 2, 8, False
        data = (np.random.default_rng(0).random((64, 16, 16, 3)) * 255).astype(np.uint8)
        engine.train(m, data, cfg, run_dir, log=lambda s: None)
        state = {"queue": m.queue, "queue_ptr": m.queue_ptr} if method == "moco" else {"center": m.center}
        weights = {n: p.detach() for n, p in m.named_parameters()}  # online and EMA target networks
        torch.save({**state, "weights": weights}, out.format(rank=rank))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ["moco", "dino"])
def test_queue_and_centre_are_identical_on_every_rank(method, tmp_path):
    out = str(tmp_path / "rank{rank}.pt")
    mp.spawn(train_worker, args=(method, str(tmp_path / "init"), out, str(tmp_path / "run")), nprocs=WORLD, join=True)
    a, b = (torch.load(out.format(rank=r), weights_only=True) for r in range(WORLD))
    for key in a:
        if key == "weights":
            for name in a[key]:
                assert torch.equal(a[key][name], b[key][name]), name  # DDP keeps the replicas equal
        else:
            assert torch.equal(a[key], b[key]), key
    assert (tmp_path / "run" / "last.pt").is_file()  # rank 0 wrote the checkpoint


def features_worker(rank: int, init_file: str, out: str) -> None:
    import numpy as np

    from selfsup.eval.features import extract_features
    from selfsup.models import create_backbone

    join(rank, init_file)
    try:
        torch.manual_seed(0)
        enc = create_backbone("small_cnn", in_chans=3, image_size=16, width=4)
        data = (np.random.default_rng(0).random((37, 16, 16, 3)) * 255).astype(np.uint8)  # 37: uneven shards
        torch.save(extract_features(enc, data, batch_size=8, amp=False), out.format(rank=rank))
    finally:
        dist.destroy_process_group()


def test_features_are_extracted_by_shard_and_gathered_in_order(tmp_path):
    import numpy as np

    from selfsup.eval.features import extract_features
    from selfsup.models import create_backbone

    out = str(tmp_path / "rank{rank}.pt")
    mp.spawn(features_worker, args=(str(tmp_path / "init"), out), nprocs=WORLD, join=True)
    torch.manual_seed(0)
    enc = create_backbone("small_cnn", in_chans=3, image_size=16, width=4)
    data = (np.random.default_rng(0).random((37, 16, 16, 3)) * 255).astype(np.uint8)
    want = extract_features(enc, data, batch_size=8, amp=False)
    for r in range(WORLD):
        assert torch.allclose(torch.load(out.format(rank=r), weights_only=True), want, atol=1e-6)


def agree_worker(rank: int, init_file: str, out: str) -> None:
    from selfsup import distributed

    join(rank, init_file)
    try:  # the same step on both ranks, then rank 1 a step behind (it read an older checkpoint)
        cpu = torch.device("cpu")
        torch.save([distributed.same_on_all_ranks(8, cpu), distributed.same_on_all_ranks(8 - rank, cpu)],
                   out.format(rank=rank))
    finally:
        dist.destroy_process_group()


def test_ranks_that_resumed_from_different_steps_are_told_on_every_rank(tmp_path):
    """Each rank reads the checkpoint itself; the engine refuses to train (instead of
    hanging in a collective) when another job rewrote it between their reads."""
    out = str(tmp_path / "rank{rank}.pt")
    mp.spawn(agree_worker, args=(str(tmp_path / "init"), out), nprocs=WORLD, join=True)
    for r in range(WORLD):
        assert torch.load(out.format(rank=r)) == [True, False]


def test_sync_bn_on_the_cpu_is_a_one_line_error(tmp_path):
    from selfsup.errors import SelfSupError
    from selfsup.train import engine

    from test_engine import images, tiny_setup

    m, cfg = tiny_setup(tmp_path)
    cfg.train.sync_bn = True
    with pytest.raises(SelfSupError, match="train.sync_bn needs CUDA"):
        engine.train(m, images(), cfg, tmp_path / "r", log=lambda s: None)
    assert not (tmp_path / "r").exists()  # a run that never started leaves nothing
