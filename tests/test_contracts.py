"""Contracts generated from the registries: every registered method x every preset it
declares, and every registered backbone, is tested here without a test written for it
(as timm's ``tests/test_models.py`` does for its models).  A method or backbone added
later is picked up by the parametrisation.

Per method and preset (built as ``selfsup pretrain --method M --preset P`` builds it,
through :func:`selfsup.api.build_config` and :func:`selfsup.api.initial_encoder`, on
16 px images or 16-token sentences):

* one training step gives a finite scalar loss, and every parameter in
  ``trainable_parameters()`` gets a finite, non-zero gradient (exceptions: the
  documented :data:`NO_GRADIENT_AT_STEP_0`, which must then get one at step 1);
* ``trainable_parameters()`` are exactly the parameters that require a gradient, and
  every other parameter -- EMA targets, teachers, key encoders: any top-level module
  that starts as an exact copy of another -- gets no gradient;
* ``state_dict`` loaded into a fresh instance (another seed) gives the same state, the
  same next-step loss and gradients, and the same state after that step (queues,
  centres, BatchNorm statistics);
* through the real engine (:func:`selfsup.train.engine.train`), a run stopped after 1 of 4
  steps and resumed across the epoch boundary gives the same loss at every later step and
  ends bit-identical to an uninterrupted one, with the preset's optimizer, schedule and
  method options;
* one training step at the method's declared ``min_batch_size`` (the smallest batch the
  engine lets through) gives a finite loss and gradients.

Deep backbones are cut to one or two blocks (:func:`shrink`); everything else of a preset is
kept: its backbone, widths, method options and optimizer.  The one allow-list is
:data:`NO_GRADIENT_AT_STEP_0`; bugs these tests found are in :data:`KNOWN_BUGS`.

Per backbone (registered, plus one ``torchvision:ARCH`` and one ``timm:NAME``): forward
shape ``(N, num_features)``; every export format that applies (selfsup; torchvision or
timm for library models, rebuilt from the recipe written beside them; Hugging Face for
text) gives back identical outputs; ``rebuild_encoder`` likewise; and ``--init`` from each
export (``RunConfig.init`` through :func:`selfsup.api.initial_encoder`) loads the same
weights.
"""
from __future__ import annotations

import atexit
import copy
import functools
import inspect
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.api import build_config, initial_encoder, method_resources, takes_teacher
from selfsup.config import RunConfig
from selfsup.data import as_dataset, create_dataset, to_input
from selfsup.data.text import TextOptions
from selfsup.encoders import export_encoder, load_encoder
from selfsup.methods import METHODS, create_method
from selfsup.models import BACKBONES, create_backbone, modality, rebuild_encoder
from selfsup.models.backbones import LibraryNet, backbone_builder
from selfsup.train import checkpoint, engine
from selfsup.train.optim import build_optimizer

# the smallest side at which every preset runs its whole recipe: MAE's HOG target starts at
# 16 px, and at 8 px ResNet-18 ends on 1x1 maps, where BatchNorm refuses a batch of one
IMAGE_SIZE = 16
TEXT = TextOptions(max_length=16, vocab_size=200)

CASES = [(name, preset) for name in METHODS for preset in METHODS.get(name).presets]
CASE_IDS = [f"{name}-{preset}" for name, preset in CASES]

# Bugs in src these tests found, by test and case: each is an xfail(strict=True), so the
# fix turns it into a failure that asks for its entry here to be removed.
KNOWN_BUGS: dict[tuple[str, str], str] = {}  # (test, case id) -> why; each case is a strict xfail


def cases(test: str) -> list:
    """CASES as pytest params for ``test``, known bugs marked."""
    return [pytest.param(*case, id=case_id, marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[test, case_id])]
                         if (test, case_id) in KNOWN_BUGS else [])
            for case, case_id in zip(CASES, CASE_IDS)]


LIBRARY_EXAMPLES = ["torchvision:mobilenet_v3_small", "timm:resnet10t"]  # one small model of each library
BACKBONE_NAMES = [*BACKBONES, *LIBRARY_EXAMPLES]

# The allow-list: trainable parameters a method legitimately leaves without a gradient at
# its first step, by method, as a function of the built method.  The set must be exact (a
# parameter listed here that gets a gradient fails too), and each of them must get one at
# step 1 (the test runs one step per epoch).
NO_GRADIENT_AT_STEP_0 = {
    # DINO's prototypes are frozen for the first `freeze_last_layer` epochs: the forward uses
    # a detached copy, so backward leaves grad None (the authors' cancel_gradients_last_layer).
    # DINO exposes no list of the parameters it freezes, hence this entry.
    "dino": lambda m: {"head.last_layer"} if m.cfg.freeze_last_layer > 0 else set(),
}


def quiet(_message: str) -> None:
    pass


# --- data and builders ---------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def images(n: int = 8):
    """``n`` random 16 px RGB images as a Dataset (what pretrain makes of a uint8 array)."""
    rng = np.random.default_rng(0)
    return as_dataset((rng.random((n, IMAGE_SIZE, IMAGE_SIZE, 3)) * 255).astype(np.uint8))


@functools.lru_cache(maxsize=None)
def sentences():
    """A small `lang` split: 16 tokens per sentence, a 200-word WordPiece vocabulary."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # most sentences are truncated at 16 tokens, on purpose
        return create_dataset("lang", num_train=64, num_test=8, text=TEXT)


def preset_modality(method: str, preset: str) -> str:
    """What ``--method method --preset preset`` trains on: its backbone's modality."""
    return modality(METHODS.get(method).presets[preset].get("backbone", RunConfig().backbone))


def data_for(method: str, preset: str):
    return sentences() if preset_modality(method, preset) == "text" else images()


@functools.lru_cache(maxsize=None)
def text_teacher() -> str:
    """A one-layer BERT with a tokenizer of its own (another vocabulary than the student's),
    written as a Hugging Face folder: the --teacher of distill's text presets, which name
    none (the user gives one)."""
    folder = Path(tempfile.mkdtemp(prefix="selfsup-teacher-"))
    atexit.register(shutil.rmtree, folder, True)
    ds = create_dataset("lang", num_train=64, num_test=8, text=TextOptions(max_length=24, vocab_size=150))
    with torch.random.fork_rng():
        torch.manual_seed(2)
        enc = create_backbone("bert", tokenizer=ds.train.tokenizer, max_length=24, layers=1, hidden=32, heads=2)
    return str(export_encoder(enc, folder / "teacher", format="hf"))


def first(ds, n: int):
    """The first ``n`` training samples as a Dataset of their own (what a run trains on)."""
    return type(ds)(name=ds.name, train=ds.train.subset(np.arange(n)), test=None)


def batch(ds, n: int) -> torch.Tensor:
    """The first ``n`` samples as model input, as the engine makes it."""
    return to_input(torch.from_numpy(ds.train.read(np.arange(n))))


def preset_config(method: str, preset: str, **overrides) -> RunConfig:
    """The run config of ``--method method --preset preset`` with ``overrides``, on the CPU
    (with :func:`text_teacher` for a preset that takes a teacher and names none)."""
    if takes_teacher(method) and "method_cfg.teacher" not in METHODS.get(method).presets[preset]:
        overrides = {"method_cfg.teacher": text_teacher(), **overrides}
    return build_config(method, preset=preset, overrides={"train.device": "cpu", "train.progress": False,
                                                          "train.monitor_every": 0, **overrides})


DEPTH_KNOBS = ("depth", "layers")  # the builder arguments that set a backbone's number of blocks (ViTs, BERT)


def depth_limit(builder, depth: int) -> dict:
    """``{knob: depth}`` for a backbone builder that takes a depth: 12 identical blocks run
    the code one or two of them run, at 6-12x the time (BERT-base's 85 M parameters took
    10 s a case, and its checkpoint with AdamW's state is a gigabyte)."""
    knobs = inspect.signature(builder).parameters
    return {k: depth for k in DEPTH_KNOBS if k in knobs}


def shrink(cfg: RunConfig, depth: int = 2) -> RunConfig:
    """``cfg`` with its backbone cut to ``depth`` blocks where it has a depth (the only part
    of a preset changed: its backbone, widths, method options and optimizer stay)."""
    for knob, value in depth_limit(backbone_builder(cfg.backbone), depth).items():
        cfg.backbone_cfg[knob] = min(value, cfg.backbone_cfg.get(knob, value))
    return cfg


def build(cfg: RunConfig, ds, seed: int):
    """The method of ``cfg`` on ``ds``, as :func:`selfsup.api.pretrain` builds it."""
    torch.manual_seed(seed)
    enc = initial_encoder(cfg, ds, quiet)
    return create_method(cfg.method, enc, cfg.method_cfg, image_size=ds.image_size, channels=ds.channels,
                         **method_resources(cfg))


def step(m, ds, x: torch.Tensor, generator: torch.Generator):
    """``m.training_step`` on ``x`` (the first samples of ``ds``) as the engine calls it:
    after the method's ``prepare`` on ``ds``'s training samples, and with ``index=`` for a
    method that wants the samples' indices (distill's teacher cache)."""
    with torch.no_grad():
        m.prepare(ds.train, torch.device("cpu"))
    kw = {"index": torch.arange(len(x))} if m.wants_index else {}
    return m.training_step(x, generator, **kw)


def batch_size(method: str) -> int:
    """Two samples per step: the fewest at which every method's loss is meaningful
    (``min_batch_size`` has its own test)."""
    return max(2, METHODS.get(method).min_batch_size)


def ema_copies(m) -> list[tuple[str, str]]:
    """``(online, copy)`` pairs of top-level submodules where one starts as an exact copy of
    the other (same parameter names, shapes and values): EMA targets, teachers, key
    encoders.  Which of the two is the copy: the one without trainable parameters (the
    test then asserts that it has none, and that the other has some)."""
    children = {n: dict(c.named_parameters()) for n, c in m.named_children()}
    children = {n: p for n, p in children.items() if p}
    pairs = []
    names = list(children)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = children[a], children[b]
            if pa.keys() != pb.keys() or any(pa[k].shape != pb[k].shape for k in pa):
                continue
            if all(torch.equal(pa[k], pb[k]) for k in pa):
                a_frozen = not any(p.requires_grad for p in pa.values())
                pairs.append((b, a) if a_frozen else (a, b))
    return pairs


def assert_same_state(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


# --- methods x presets ---------------------------------------------------------------------


@pytest.mark.parametrize(("method", "preset"), cases("step"))
def test_method_step_gradients_and_state_dict(method, preset, one_thread):
    cfg = shrink(preset_config(method, preset))
    ds = data_for(method, preset)
    x = batch(ds, batch_size(method))
    m = build(cfg, ds, seed=0).train()
    m.setup_schedules(4, 1)  # one step per epoch: freezes that last an epoch end after step 0

    params = dict(m.named_parameters())
    trainable = dict(m.trainable_parameters())
    assert set(trainable) == {n for n, p in params.items() if p.requires_grad}
    frozen = {n: p for n, p in params.items() if not p.requires_grad}
    copies = ema_copies(m)
    for online, target in copies:  # EMA targets are frozen, whole; what they follow is trained
        assert all(not p.requires_grad for p in getattr(m, target).parameters()), \
            f"{target} starts as a copy of {online} (an EMA target?) but has trainable parameters"
        assert any(p.requires_grad for p in getattr(m, online).parameters()), f"{online} has nothing to train"
    at_start = {target: copy.deepcopy(getattr(m, target).state_dict()) for _, target in copies}

    loss, logs = step(m, ds, x, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and math.isfinite(loss.item()), loss
    assert all(math.isfinite(float(v)) for v in logs.values()), logs
    loss.backward()
    missing = {n for n, p in trainable.items() if p.grad is None}
    assert missing == NO_GRADIENT_AT_STEP_0.get(method, lambda _: set())(m)
    for n, p in trainable.items():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n
    assert not [n for n, p in frozen.items() if p.grad is not None]

    # one optimizer step with the preset's optimizer, in the engine's order
    opt = build_optimizer(m.trainable_parameters(), cfg.optim, m.lr_scales())
    assert not {id(p) for g in opt.param_groups for p in g["params"]} & {id(p) for p in frozen.values()}
    for group in opt.param_groups:
        group["lr"] = 1e-3 * group["lr_scale"]
    m.before_optimizer_step()
    opt.step()
    m.after_optimizer_step(0)

    # the state dict is the whole state: a fresh instance (another seed) that loads it
    # takes the same next step and ends it in the same state
    fresh = build(cfg, ds, seed=1).train()
    fresh.setup_schedules(4, 1)
    fresh.load_state_dict(m.state_dict())
    assert_same_state(m, fresh)
    losses = []
    for model in (m, fresh):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # dropout and stochastic depth draw from the global generator
        step_loss, _ = step(model, ds, x, torch.Generator().manual_seed(1))
        step_loss.backward()
        losses.append(step_loss.detach())
    assert torch.equal(losses[0], losses[1])
    assert_same_state(m, fresh)
    for target, state in at_start.items():  # the copies follow their online networks (EMA), without gradients
        now = getattr(m, target).state_dict()
        assert any(not torch.equal(now[k], v) for k, v in state.items()), f"{target} never moved"
    grads = dict(fresh.trainable_parameters())
    for n, p in m.trainable_parameters():  # step 1: every trainable parameter, no exceptions
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert torch.equal(p.grad, grads[n].grad), n
    assert not [n for n, p in frozen.items() if p.grad is not None]


def engine_run(cfg: RunConfig, ds, run_dir, *, seed: int = 0, resume: bool = False):
    """``(method, metric records)`` of an engine run of ``cfg`` on ``ds``, the method built
    from ``seed``."""
    m = build(cfg, ds, seed)
    return m, engine.train(m, ds.train, cfg, run_dir, resume=resume, log=quiet)


@pytest.mark.parametrize(("method", "preset"), cases("resume"))
def test_stop_and_resume_is_bit_exact(method, preset, tmp_path, one_thread):
    """2 epochs of 2 steps straight, against 1 step, stopped mid-epoch, then resumed across
    the epoch boundary by a method built from another seed under another global RNG state:
    the same loss at every step after the stop, every parameter and buffer bit-identical at
    the end."""
    bs = batch_size(method)
    cfg = shrink(preset_config(method, preset, **{"train.epochs": 2, "train.batch_size": bs,
                                                  "train.log_every": 1}), depth=1)
    ds = first(data_for(method, preset), 2 * bs)
    full, full_log = engine_run(cfg, ds, tmp_path / "full")

    stopped = copy.deepcopy(cfg)
    stopped.train.max_steps = 1
    engine_run(stopped, ds, tmp_path / "part")
    assert checkpoint.load_checkpoint(tmp_path / "part")["step"] == 1
    torch.manual_seed(123)
    resumed, resumed_log = engine_run(cfg, ds, tmp_path / "part", seed=1, resume=True)
    assert [(r["step"], r["loss"]) for r in resumed_log] == [(r["step"], r["loss"]) for r in full_log[1:]]
    assert_same_state(full, resumed)


@pytest.mark.parametrize(("method", "preset"), cases("min_batch_size"))
@pytest.mark.filterwarnings("ignore:.*degrees of freedom:UserWarning")  # z_std of one sample: NaN, a log only
def test_one_step_at_the_min_batch_size(method, preset, one_thread):
    """The engine accepts a batch from the method's ``min_batch_size`` up (the instance's, so
    that a method may raise it with its options); a step at it gives a finite loss and
    gradients."""
    cfg = shrink(preset_config(method, preset))
    ds = data_for(method, preset)
    m = build(cfg, ds, seed=0).train()
    m.setup_schedules(1, 1)
    loss, _ = step(m, ds, batch(ds, m.min_batch_size), torch.Generator().manual_seed(0))
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() for _, p in m.trainable_parameters() if p.grad is not None)


# --- backbones -----------------------------------------------------------------------------


def make_backbone(name: str, seed: int = 0):
    """Backbone ``name`` with its defaults, two blocks deep where it has a depth."""
    torch.manual_seed(seed)
    short = depth_limit(backbone_builder(name), 2)
    if modality(name) == "text":
        return create_backbone(name, tokenizer=sentences().train.tokenizer, max_length=TEXT.max_length, **short)
    return create_backbone(name, in_chans=3, image_size=IMAGE_SIZE, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3],
                           **short)


def backbone_input(name: str) -> torch.Tensor:
    return batch(sentences() if modality(name) == "text" else images(), 3)


def export_formats(enc) -> list[str]:
    """The formats that apply to ``enc``: a text encoder's Hugging Face folder; an image
    encoder's selfsup file and, for a library's own model, that library's state dict."""
    if modality(enc.name) == "text":
        return ["hf"]
    net = getattr(enc, "net", None)
    return ["selfsup", *([net.library] if isinstance(net, LibraryNet) else [])]


def library_model(recipe_file, x: torch.Tensor) -> torch.Tensor:
    """Build the library model the way the recipe beside a torchvision / timm export says
    (its ``build`` and ``load`` lines, run as a user would paste them) and feed it ``x``
    as its ``input`` line says."""
    import safetensors.torch
    import timm
    import torchvision

    how = json.loads(recipe_file.read_text())
    scope = {"torch": torch, "torchvision": torchvision, "timm": timm, "safetensors": safetensors}
    exec("\n".join([*how["build"], how["load"], "m.eval()"]), scope)  # noqa: S102 (our own recipe)
    mean, std = (torch.tensor(how[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    x = (x - mean) / std
    if "repeated to 3 channels" in how["input"]:
        x = x.repeat(1, 3 // x.shape[1], 1, 1)
    if "resize" in how:  # a pretrained model fed at the size it was trained at
        x = torch.nn.functional.interpolate(x, size=how["resize"], mode="bilinear", align_corners=False,
                                            antialias=True)
    with torch.no_grad():
        return scope["m"](x)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_backbone_forward_export_rebuild_and_init(name, tmp_path, one_thread):
    enc = make_backbone(name).eval()
    x = backbone_input(name)
    with torch.no_grad():
        h = enc(x)
    assert h.shape == (len(x), enc.num_features) and torch.isfinite(h).all()

    with torch.no_grad():  # the spec saved with runs and exports rebuilds it
        assert torch.equal(rebuild_encoder({"name": enc.name, "kwargs": enc.kwargs}, enc.state_dict())(x), h)

    formats = export_formats(enc)
    for fmt in formats:
        path = export_encoder(enc, tmp_path / (fmt if fmt == "hf" else f"{fmt}.safetensors"), format=fmt)
        if fmt in ("selfsup", "hf"):
            with torch.no_grad():
                assert torch.equal(load_encoder(path, device="cpu")(x), h), fmt
        else:
            assert (library_model(path.with_suffix(".json"), x) - h).abs().max() < 1e-5, fmt

        # --init from the export: a new run's encoder (another seed) starts from these weights
        cfg = RunConfig(backbone=name, init=str(path), backbone_cfg=dict(depth_limit(backbone_builder(name), 2)))
        if fmt == "hf":
            cfg.method, cfg.data.max_length = "mlm", TEXT.max_length
        torch.manual_seed(1)
        started = initial_encoder(cfg, sentences() if fmt == "hf" else images(), quiet)
        ours = enc.bert if fmt == "hf" else enc.net
        theirs = started.bert if fmt == "hf" else started.net
        assert_same_state(ours, theirs)
