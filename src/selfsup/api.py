"""The Python API; the CLI is a thin layer over these functions.

    import selfsup
    run = selfsup.pretrain("simclr", "shapes", epochs=5)
    print(selfsup.evaluate(run.encoder, "shapes"))
    enc = selfsup.load_encoder(run.run_dir)       # a plain nn.Module: [0,1] images -> (N, D)
"""
from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import io
import json
import operator
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from selfsup import distributed
from selfsup.config import RunConfig, apply_overrides, coerce, from_dict, load_yaml, parse_overrides, read_run_config
from selfsup.data import Dataset, as_dataset, hold_out_test, source_modality
from selfsup.data.text import TextOptions, TextSet
from selfsup.data.tokenizer import Tokenizer
from selfsup.data.pixels import window_key
from selfsup.data.python import as_samples
from selfsup.errors import SelfSupError
from selfsup.files import WriteError, atomic_write, atomic_write_text, open_atomic, remove_stale
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.label_efficiency import fresh_copy
from selfsup.eval.linear import linear_probe_accuracy
from selfsup.eval.monitor import OnlineMonitor
from selfsup.eval.selection import SelectionResult
from selfsup.methods import METHODS, Method, create_method
from selfsup.methods.base import method_config
from selfsup.models import Encoder, TextEncoder, create_backbone, modality, rebuild_encoder
from selfsup.models import pretrained
from selfsup.models.backbones import backbone_builder
from selfsup.models.runtime import choose_precision, cpu_bf16_support, select_device
from selfsup.registry import no_option, unknown
from selfsup.schedules import LR_SCHEDULES
from selfsup.train import checkpoint, engine
from selfsup.train.safety import hold_run_folder
from selfsup.train.optim import LR_SCALINGS, OPTIMIZERS
from selfsup.encoders import export_encoder, load_encoder, load_init_weights, load_teacher, teacher_spec_error

# keyword shorthands accepted by pretrain(); every other option is a dotted override
SHORTHANDS = {
    "epochs": "train.epochs", "batch_size": "train.batch_size", "seed": "train.seed",
    "device": "train.device", "out_dir": "train.out_dir", "max_steps": "train.max_steps",
    "progress": "train.progress", "lr": "optim.base_lr", "optimizer": "optim.name",
    "image_size": "data.image_size", "num_train": "data.num_train", "backbone": "backbone",
}


@dataclass
class Run:
    """A finished (or stopped) pretraining run."""
    config: RunConfig
    run_dir: Path
    method: Method
    dataset: Dataset
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def encoder(self) -> Encoder:
        return self.method.encoder


TEXT_PRESET = "{}-text"  # a method's preset NAME for text data, when it trains on images and on text


def build_config(method: str = "simclr", *, preset: str | None = "cpu", config_file: str | None = None,
                 overrides: dict[str, Any] | list[str] | None = None) -> RunConfig:
    """Defaults, then the method's preset, then a YAML file, then overrides.

    A method that trains on images and on text keeps the text variant of a preset NAME
    under NAME-text (distill's ``cpu-text``); it is taken instead of NAME when the data
    source the layers name holds text (:func:`selfsup.data.source_modality`: ``lang``,
    ``pydoc``, ``text:PATH``).  Data whose kind shows only once read (``hf:PATH``, a
    Python object) keeps NAME; the modality check then names the text preset."""
    cls = METHODS.get(method)
    if preset and preset not in cls.presets:
        raise SelfSupError(f"method {method!r} has no preset {preset!r}; valid: {', '.join(sorted(cls.presets))}")
    layers = [load_yaml(config_file) if config_file else {}, overrides or {}]
    cfg = _layered(method, cls.presets.get(preset, {}), layers)
    text = TEXT_PRESET.format(preset)
    if preset and text in cls.presets and source_modality(cfg.data.source) == "text":
        cfg = _layered(method, cls.presets[text], layers)
    return validate(cfg)


def _layered(method: str, preset: dict[str, Any], layers: list) -> RunConfig:
    """The defaults of ``method`` with ``preset`` and then each of ``layers`` applied (copies:
    a nested --set must not edit the preset, and the layers may be applied again)."""
    cfg = RunConfig(method=method)
    for layer in (preset, *layers):
        apply_overrides(cfg, copy.deepcopy(layer))
    return cfg


def validate(cfg: RunConfig) -> RunConfig:
    """Check every registry name and choice before any data is loaded or model built."""
    from selfsup.data import DATASETS

    options = method_config(cfg.method, cfg.method_cfg)
    if takes_teacher(cfg.method):
        why = teacher_spec_error(options.teacher, options.teacher_weights)
        if why:
            raise SelfSupError(why)
    cfg.backbone_cfg = backbone_options(cfg.backbone, cfg.backbone_cfg)
    if not cfg.data.source.startswith(PYTHON_SOURCE):
        DATASETS.get(cfg.data.source.partition(":")[0])
    OPTIMIZERS.get(cfg.optim.name)
    LR_SCALINGS.get(cfg.optim.lr_scaling)
    LR_SCHEDULES.get(cfg.optim.schedule)
    if cfg.init and cfg.data.tokenizer:
        raise SelfSupError("--init brings the model's own tokenizer; drop --tokenizer")
    o, t, d = cfg.optim, cfg.train, cfg.data
    rules = [  # (ok, option, what it must be)
        (o.base_lr > 0, "optim.base_lr", "positive"), (o.weight_decay >= 0, "optim.weight_decay", "at least 0"),
        (o.weight_decay_end is None or o.weight_decay_end >= 0, "optim.weight_decay_end", "at least 0"),
        (o.warmup_epochs >= 0, "optim.warmup_epochs", "at least 0"), (o.min_lr >= 0, "optim.min_lr", "at least 0"),
        (o.clip_grad >= 0, "optim.clip_grad", "at least 0 (0 = off)"), (o.eps > 0, "optim.eps", "positive"),
        (0 <= o.momentum < 1, "optim.momentum", "in [0, 1)"), (all(0 <= b < 1 for b in o.betas), "optim.betas", "in [0, 1)"),
        (t.epochs >= 1, "train.epochs", "at least 1"), (t.batch_size >= 1, "train.batch_size", "at least 1"),
        (0 <= t.threads <= CORES, "train.threads", f"at least 0 (0 = torch's default) and at most {CORES}, the "
                                                     "cores this machine has"),
        (t.log_every >= 1, "train.log_every", "at least 1"),
        (t.monitor_every >= 0, "train.monitor_every", "at least 0 (0 = off)"),
        (t.monitor_samples >= 2, "train.monitor_samples", "at least 2"),
        (t.checkpoint_every >= 0, "train.checkpoint_every", "at least 0 (0 = at epoch ends)"),
        (t.max_steps is None or t.max_steps >= 1, "train.max_steps", "at least 1"),
        (d.num_train is None or d.num_train >= 1, "data.num_train", "at least 1"),
        (d.image_size is None or d.image_size >= 1, "data.image_size", "at least 1"),
        (d.channels is None or d.channels >= 1, "data.channels", "at least 1 (or null: automatic)"),
        (d.max_length >= 4, "data.max_length", "at least 4"), (d.vocab_size >= 64, "data.vocab_size", "at least 64"),
    ]
    for ok, option, must in rules:
        if not ok:
            raise SelfSupError(f"{option} must be {must}, got {operator.attrgetter(option)(cfg)}")
    window_key(d.window)  # a bad data.window is a one-line error now, not after the data is read
    # the largest tensors these sizes ask for, before anything is allocated: a batch of
    # views in float32 (images) or one layer's attention scores per head (text)
    if d.image_size is not None:
        _must_fit(t.batch_size * 2 * 3 * d.image_size ** 2 * 4, "data.image_size", d.image_size)
    _must_fit(t.batch_size * d.max_length ** 2 * 4, "data.max_length", d.max_length)
    return cfg


CORES = os.cpu_count() or 1


def memory_bytes() -> int:
    """This machine's physical memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 ** 40  # unknown: no bound from it


def _must_fit(nbytes: int, option: str, value: Any) -> None:
    if nbytes > memory_bytes():
        raise SelfSupError(f"{option}={value} needs about {nbytes / 2**30:.0f} GiB for one batch, more than this "
                           f"machine's {memory_bytes() / 2**30:.0f} GiB; choose a smaller {option}")


def backbone_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``backbone_cfg`` checked against the builder's keyword arguments (the closest one
    named for a typo) and typed like their defaults, before any data is read."""
    import inspect

    params = inspect.signature(backbone_builder(name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)  # timm:NAME / torchvision:NAME builders pass options on to the library
    given = ("in_chans", "image_size", "tokenizer", "max_length", "mean", "std")  # set from the data
    known = {n: p for n, p in params.items() if n not in given and p.kind is inspect.Parameter.KEYWORD_ONLY}
    typed = {}
    for key, value in options.items():
        if key not in known:
            raise SelfSupError(no_option(f"backbone {name!r}", key, known, "backbone_cfg."))
        default = known[key].default
        typed[key] = value if default is inspect.Parameter.empty else coerce(
            default, value, f"backbone_cfg.{key}", known[key].annotation)
    return typed


def versions() -> dict[str, Any]:
    import torchvision

    info = {"python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": _cpu_model(), "cpu_bf16": cpu_bf16_support(), "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    from selfsup import __version__

    info["selfsup"] = __version__
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


PYTHON_SOURCE = "python:"  # data.source of a run whose data came as a Python object


def text_options(cfg: RunConfig, tokenizer: Any = None) -> TextOptions:
    """How the run reads and tokenises text: ``tokenizer`` (a resumed run's own), else
    data.tokenizer, else the --init folder's, else one trained on the training split."""
    d = cfg.data
    return TextOptions(tokenizer=tokenizer or d.tokenizer or cfg.init, max_length=d.max_length,
                       vocab_size=d.vocab_size, text_column=d.text_column, label_column=d.label_column,
                       unit=d.text_unit)


def pixel_options(cfg: RunConfig) -> dict[str, Any]:
    """data.window and data.channels where they are not the defaults: what a folder's
    decoding takes, and what the run's encoder records so that evaluating, embedding and
    inspecting decode the images the same way."""
    d = cfg.data
    options = {"window": window_key(d.window)} if window_key(d.window) != "auto" else {}
    return {**options, **({"channels": d.channels} if d.channels is not None else {})}


def load_data(cfg: RunConfig, data: Any = None, *, tokenizer: Any = None) -> Dataset:
    """The run's data: ``data`` (a Python object, see :func:`selfsup.data.as_dataset`) or
    the source named in the config."""
    d = cfg.data
    ds = as_dataset(d.source if data is None else data, image_size=d.image_size, cache_dir=d.cache_dir,
                    strict=d.strict, download=d.download, seed=0, in_memory=d.in_memory, progress=cfg.train.progress,
                    text=text_options(cfg, tokenizer), **pixel_options(cfg))
    if d.num_train is not None:
        ds.train = ds.train.subset(np.arange(min(d.num_train, len(ds.train))))
    return ds


STATS_BYTES = 256 * 2**20  # channel_stats holds at most this much float32 at once


def channel_stats(images, max_images: int = 10_000, chunk: int = 1000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the first ``max_images`` images (an ImageSet or a
    (N, H, W, C) uint8 array), in [0, 1] units.

    When those images fit in :data:`STATS_BYTES` as float32 they are read at once (numpy's
    float32 mean and std, as every run before the disk cache computed them, so earlier
    runs keep their normalisation to the bit); otherwise ``chunk`` images at a time with
    float64 sums.
    """
    samples = as_samples(images)
    n = min(len(samples), max_images)

    def read(idx):
        return samples.read(idx).astype(np.float32) / 255

    if n * int(np.prod(samples.images.shape[1:])) * 4 <= STATS_BYTES:
        x = read(np.arange(n))
        return x.mean(axis=(0, 1, 2)).tolist(), np.maximum(x.std(axis=(0, 1, 2)), 1e-3).tolist()
    total = total_sq = count = 0
    for s in range(0, n, chunk):
        x = read(np.arange(s, min(s + chunk, n))).astype(np.float64)
        total, total_sq = total + x.sum(axis=(0, 1, 2)), total_sq + (x * x).sum(axis=(0, 1, 2))
        count += x.shape[0] * x.shape[1] * x.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    return mean.tolist(), np.maximum(std, 1e-3).tolist()


STALE_FILES = ("summary.json", "summary_map.png")  # the report's summary of the weights as they were
RUN_FILES = (checkpoint.CHECKPOINT, "encoder.safetensors", "encoder.pt", "metrics.jsonl",
             "config.yaml")  # a run's files, removed when it is started again or replaced


def pretrain(method: str | None = None, data: Any = None, *, preset: str | None = "cpu",
             config_file: str | None = None, overrides: dict[str, Any] | list[str] | None = None,
             resume: bool = False, overwrite: bool = False, log: Callable[[str], None] = print,
             **shorthands: Any) -> Run:
    """Pretrain an encoder without labels; returns the :class:`Run`.

    ``shorthands`` are ``epochs, batch_size, lr, seed, device, out_dir, image_size,
    num_train, backbone, optimizer, max_steps, progress``.  ``data`` is a source spec
    (``"shapes"``, ``"folder:PATH"``, ``"hf:PATH"``) or a Python object: a numpy array,
    ``(images, labels)``, a torch or Hugging Face Dataset (see
    :func:`selfsup.data.as_dataset`).  With ``resume=True`` the run in ``out_dir``
    continues from its checkpoint with its saved configuration (overrides such as a
    larger ``epochs`` still apply; pass a Python object again as ``data``).  A folder that
    already holds a run is never replaced unless ``overwrite=True``; one whose run stopped
    before its first checkpoint is started again.  The folder is locked (never waited
    for: a second process writing it gets a one-line error at once) before deciding any
    of this, and until the encoder is exported.  ``method`` defaults to simclr for a new
    run and to the saved one on resume.
    """
    log = distributed.rank_log(log, distributed.from_env())  # under torchrun, rank 0 alone speaks and writes
    extra: dict[str, Any] = {}
    for k, v in shorthands.items():
        if k not in SHORTHANDS:
            raise SelfSupError(f"pretrain() got an unknown option {k!r}; valid: {', '.join(SHORTHANDS)}")
        if v is not None:
            extra[SHORTHANDS[k]] = v
    obj = None
    if isinstance(data, str):
        extra["data.source"] = data
    elif data is not None:
        obj = data
        extra["data.source"] = PYTHON_SOURCE + type(data).__name__
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    extra.update(overrides or {})
    from_file = load_yaml(config_file).get("train.out_dir") if config_file else None
    out_dir = Path(extra.get("train.out_dir") or from_file or RunConfig().train.out_dir)
    # Refusing needs no lock (and must not hold one: a writer starting now would be turned
    # away); every decision to write is taken again under the folder's lock.
    if resume:
        _require_checkpoint(out_dir)
        extra["train.out_dir"] = str(out_dir)  # the run is where it was read from, even if moved
    else:
        cfg = build_config(method or "simclr", preset=preset, config_file=config_file, overrides=extra)
        out_dir = Path(cfg.train.out_dir)
        _unfinished_run(out_dir, overwrite)
    main = distributed.from_env().is_main  # under torchrun, rank 0 alone writes and locks
    with hold_run_folder(out_dir, create=not resume) if main else contextlib.nullcontext() as lock:
        ckpt = None
        if resume:
            ckpt = checkpoint.require_keys(checkpoint.load_checkpoint(out_dir), checkpoint.RESUME_KEYS,
                                           out_dir / checkpoint.CHECKPOINT)
            saved = from_dict(ckpt["config"])
            if method is not None and method != saved.method:
                raise SelfSupError(f"cannot resume: the run in {out_dir} is {saved.method}, not {method}; drop "
                                   "--method or choose another --out")
            saved.train.max_steps = None  # where the last session stopped; a resumed run goes on unless told again
            cfg = validate(apply_overrides(saved, extra))
        else:
            leftovers = _unfinished_run(out_dir, overwrite)
            if leftovers and not overwrite:
                log(f"{out_dir} holds a run that stopped before its first checkpoint ({', '.join(leftovers)}); "
                    "starting it again")
        return _pretrain_locked(cfg, ckpt, obj, out_dir, lock, log)


STARTED_FILES = (checkpoint.CHECKPOINT, "encoder.safetensors", "encoder.pt")  # a folder with one holds a run's work


def _unfinished_run(out_dir: Path, overwrite: bool) -> list[str]:
    """The files of a run in ``out_dir`` that stopped before its first checkpoint (it is
    started again); a run with a checkpoint or an encoder is refused unless ``overwrite``."""
    work = [f for f in STARTED_FILES if (out_dir / f).exists()]
    if work and not overwrite:
        then = ("continue it with --resume, replace it with --overwrite" if checkpoint.CHECKPOINT in work else
                "it has no checkpoint to resume; replace it with --overwrite")
        raise SelfSupError(f"{out_dir} already holds a run ({', '.join(work)}); {then}, or choose another --out")
    return [f for f in RUN_FILES if f not in work and (out_dir / f).exists()]


def _require_checkpoint(out_dir: Path) -> None:
    """A run folder without a checkpoint cannot be resumed; say what to do instead (what
    :func:`_unfinished_run` will accept)."""
    if not out_dir.is_dir():
        checkpoint.load_checkpoint(out_dir)  # its "not found", or a file given where a folder is meant
        raise SelfSupError(f"--out {out_dir} is a file; --resume continues the run in a folder")
    if (out_dir / checkpoint.CHECKPOINT).exists():
        return
    work = [f for f in STARTED_FILES if (out_dir / f).exists()]
    if work:
        raise SelfSupError(f"cannot resume: {out_dir} holds no checkpoint, only {', '.join(work)}; replace it with "
                           "--overwrite or choose another --out")
    raise SelfSupError(f"cannot resume: {out_dir} holds no checkpoint (its run stopped before saving one); start it "
                       "again without --resume")


def _pretrain_locked(cfg: RunConfig, ckpt: dict | None, obj: Any, run_dir: Path, lock: Any,
                     log: Callable[[str], None]) -> Run:
    """:func:`pretrain` once the folder is decided and locked: data, model, training, and the
    exported encoder (all under the lock)."""
    if cfg.data.source.startswith(PYTHON_SOURCE) and obj is None:
        raise SelfSupError("this run was trained on a Python object: pass it again as data= to resume")
    saved_tokenizer = ckpt["encoder"]["kwargs"].get("tokenizer") if ckpt else None
    ds = load_data(cfg, obj, tokenizer=saved_tokenizer and Tokenizer.from_json(saved_tokenizer))
    check_modalities(cfg, ds)
    torch.manual_seed(cfg.train.seed)  # weights are a function of the seed
    encoder = rebuild_encoder(ckpt["encoder"]).train() if ckpt else initial_encoder(cfg, ds, log)
    m = create_method(cfg.method, encoder, cfg.method_cfg, image_size=ds.image_size, channels=ds.channels,
                      **method_resources(cfg))
    precision = choose_precision(select_device(cfg.train.device), cfg.train.amp)

    def write_run_files() -> None:  # once the engine has checked everything
        stale = STALE_FILES if ckpt else RUN_FILES + STALE_FILES  # a resumed run's summary no longer holds
        for f in stale:
            (run_dir / f).unlink(missing_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        atomic_write_text(run_dir / "env.json", json.dumps({**versions(), "precision": str(precision)}, indent=2))

    log(f"data {ds.name}: {len(ds.train)} training {describe(ds)}")
    monitor = None
    if cfg.train.monitor_every:
        monitor = OnlineMonitor(ds.train, fresh_copy(encoder, cfg.train.seed), epochs=cfg.train.epochs,
                                samples=cfg.train.monitor_samples, seed=cfg.train.seed, amp=cfg.train.amp)
    history = engine.train(m, ds.train, cfg, run_dir, resume=ckpt or False, log=log, on_start=write_run_files,
                           monitor=monitor, lock=lock)
    if distributed.from_env().is_main:
        try:
            export_encoder(m.encoder, run_dir / "encoder.safetensors", format="selfsup", overwrite=True)
        except WriteError as err:
            raise WriteError(f"{err}; the checkpoint {run_dir / checkpoint.CHECKPOINT} is whole: --resume writes the "
                             "encoder again") from None
    return Run(cfg, run_dir, m, ds, history)


def takes_teacher(method: str) -> bool:
    """Whether ``method`` distils a teacher (its options have ``teacher``)."""
    return "teacher" in {f.name for f in dataclasses.fields(METHODS.get(method).Config)}


def method_resources(cfg: RunConfig) -> dict[str, Any]:
    """What the method of ``cfg`` takes already built: distill's teacher, loaded here
    (a run folder or an export is read by the layers above the methods) from its spec --
    on resume too, so a checkpoint holds only the spec."""
    if not takes_teacher(cfg.method):
        return {}
    options = method_config(cfg.method, cfg.method_cfg)
    return {"teacher": load_teacher(options.teacher, options.teacher_weights)}


def check_modalities(cfg: RunConfig, ds: Dataset) -> None:
    """The method and the backbone must both take the data's kind (images or text)."""
    kind = ds.spec.modality
    cls = METHODS.get(cfg.method)
    if kind not in cls.modalities:
        hint = "--method mlm or distill (backbone bert)" if kind == "text" else "an image method such as simclr"
        raise SelfSupError(f"method {cfg.method!r} trains on {' and '.join(cls.modalities)}, but {ds.name} holds "
                           f"{kind}; use {hint}")
    if modality(cfg.backbone) != kind:
        presets = [p for p in cls.presets if p.endswith(TEXT_PRESET.format(""))] if kind == "text" else []
        hint = (f"--preset {' or '.join(presets)}" if presets else
                "--backbone bert" if kind == "text" else "an image backbone such as small_cnn")
        raise SelfSupError(f"backbone {cfg.backbone!r} trains on {modality(cfg.backbone)}, but {ds.name} holds "
                           f"{kind}; use {hint}")



def initial_encoder(cfg: RunConfig, ds: Dataset, log: Callable[[str], None] = print) -> torch.nn.Module:
    """A new run's encoder: the --init folder's model, or the backbone fitted to the data
    (normalised with the images' channel statistics; the text's tokenizer and length)."""
    if cfg.init and ds.spec.modality == "text":
        enc = TextEncoder.from_pretrained(cfg.init, max_length=cfg.data.max_length).train()
        log(f"init from {cfg.init}: {enc.config.num_hidden_layers} layers x {enc.num_features}, vocabulary "
            f"{enc.tokenizer.vocab_size}" + (" (backbone_cfg does not apply)" if cfg.backbone_cfg else ""))
        return enc
    if ds.spec.modality == "text":
        return create_backbone(cfg.backbone, tokenizer=ds.train.tokenizer, max_length=ds.spec.seq_len,
                               **cfg.backbone_cfg)
    mean, std = channel_stats(ds.train)
    enc = create_backbone(cfg.backbone, in_chans=ds.channels, image_size=ds.image_size, mean=mean, std=std,
                          data=pixel_options(cfg) or None, **cfg.backbone_cfg)
    if cfg.init:
        log(f"init from {cfg.init}: {load_init_weights(enc, cfg.init)}")
    elif pretrained.is_pretrained(cfg.backbone):
        log(f"{cfg.backbone}: {pretrained.load_weights(enc)}")
    return enc


def describe(ds: Dataset) -> str:
    spec = ds.spec
    if spec.modality == "text":
        return f"texts, vocabulary {spec.vocab_size}, at most {spec.seq_len} tokens"
    return f"images of {spec.image_size}px x {spec.channels} channels"


def label_efficiency(encoder: Encoder | str | Path, data: Any = "shapes", cfg=None, *,
                     log: Callable[[str], None] = print, text: TextOptions | None = None) -> dict[str, Any]:
    """The label-efficiency study (:func:`selfsup.eval.label_efficiency.run_study`) of
    ``encoder`` on ``data`` (a spec or a Python object; ``text``: how text files are read)."""
    from selfsup.eval import label_efficiency as le

    enc = _as_encoder(encoder).cpu().eval()
    ds = labelled_with_test(dataset_for(enc, data, text), "run a label-efficiency study")
    return le.run_study(enc, ds, cfg or le.StudyConfig(), log=log)


def labelled_with_test(ds: Dataset, what: str) -> Dataset:
    """``ds`` when it has labels and a test split; a labelled source without a test split
    gets a stratified 20% of its training images held out as one."""
    if not ds.train.has_labels or (ds.test is not None and not ds.test.has_labels):
        raise SelfSupError(f"{ds.name} needs labels to {what}; use a labelled source (shapes, digits, a folder "
                           "with class sub-folders, (images, labels), a Dataset with a label column)")
    return ds if ds.test is not None else hold_out_test(ds)


def _as_encoder(encoder: Encoder | str | Path) -> Encoder:
    return encoder if isinstance(encoder, torch.nn.Module) else load_encoder(encoder)


def dataset_for(encoder: Encoder, data: Any, text: TextOptions | None = None, **kw) -> Dataset:
    """``data`` (a spec or a Python object) as ``encoder`` takes it -- images at its size,
    text through its tokenizer and length (``text`` says only how text files are read:
    columns, unit) -- checked for the modality and the channels."""
    options = encoder.data_options()
    if text is not None and "text" in options:
        options["text"] = dataclasses.replace(text, tokenizer=options["text"].tokenizer,
                                              max_length=options["text"].max_length)
    ds = as_dataset(data, **options, **kw)
    kind = "text" if isinstance(encoder, TextEncoder) else "image"
    if ds.spec.modality != kind:
        raise SelfSupError(f"the encoder takes {kind} but {ds.name} holds {ds.spec.modality}")
    want = encoder.kwargs.get("in_chans")
    if want is not None and ds.channels != want:
        raise SelfSupError(f"the encoder takes {want}-channel images but {ds.name} has {ds.channels}")
    return ds


def evaluate(encoder: Encoder | str | Path, data: Any = "shapes", *, k: int = 20,
             temperature: float = 0.07, linear: bool = True, out: str | Path | None = None,
             progress: bool = False, amp: bool = True, text: TextOptions | None = None) -> dict[str, Any]:
    """kNN and linear-probe accuracy of frozen features on a labelled source's test split
    (a source without one gets a stratified 20% of its training labels held out).
    ``amp=False`` extracts the features in fp32 instead of bf16 where the hardware has it.

    When ``encoder`` names a run whose method has held-out metrics of its own (MLM:
    masked-token accuracy and perplexity against the unigram baseline), they are added
    under the method's name; such a run also evaluates on unlabeled data (those metrics
    only, on the test split, or the train split when there is none)."""
    if not (isinstance(k, int) and k >= 1):
        raise SelfSupError(f"--k must be a whole number of neighbours, at least 1, got {k}")
    if not temperature > 0:
        raise SelfSupError(f"--temperature must be positive (the kNN vote weights are exp(similarity / T)), "
                           f"got {temperature}")
    enc = _as_encoder(encoder)
    ds = dataset_for(enc, data, text)
    method = _run_method(encoder)
    labelled = ds.train.has_labels
    if labelled or method is None:
        ds = labelled_with_test(ds, "evaluate")
    result: dict[str, Any] = {"data": ds.name, "test_split": ds.test_origin,
                              "precision": choose_precision(next(enc.parameters()).device, amp).name}
    if method is not None:
        held = ds.test if ds.test is not None else ds.train
        result[method.name] = {"split": "test" if ds.test is not None else "train",
                               **method.heldout_metrics(held, train=ds.train)}
    if labelled:
        result.update(_frozen_probes(enc, ds, k=k, temperature=temperature, linear=linear, progress=progress,
                                     amp=amp))
    if out is not None and distributed.from_env().is_main:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out), json.dumps(result, indent=2))
    return result


def _frozen_probes(enc, ds: Dataset, *, k: int, temperature: float, linear: bool, progress: bool,
                   amp: bool) -> dict[str, Any]:
    ftr = extract_features(enc, ds.train, progress=progress, amp=amp)
    fte = extract_features(enc, ds.test, progress=progress, amp=amp)
    ytr, yte = torch.from_numpy(np.asarray(ds.train.labels)), torch.from_numpy(np.asarray(ds.test.labels))
    c = len(ds.train.classes)
    result: dict[str, Any] = {
        "n_train": len(ftr), "n_test": len(fte), "feature_dim": int(ftr.shape[1]),
        "knn_top1": knn_accuracy(ftr, ytr, fte, yte, k=k, temperature=temperature, num_classes=c),
        "knn_protocol": f"weighted kNN, cosine, k={k}, T={temperature}",
    }
    if linear:
        result["linear_top1"] = linear_probe_accuracy(ftr, ytr, fte, yte, num_classes=c)
        result["linear_protocol"] = "standardised features, L-BFGS logistic regression, L2 chosen on a train split"
    return result


def load_method(path: str | Path | dict) -> Method:
    """The whole method of a run (encoder, heads, training state) from its checkpoint (a
    run folder, a ``last.pt``, or the checkpoint dict already read)."""
    ckpt = path if isinstance(path, dict) else checkpoint.load_checkpoint(path)
    if ckpt["format"] != checkpoint.FORMAT:
        raise SelfSupError(f"{path} is an exported encoder, not a run; its method is not in it")
    cfg = from_dict(ckpt["config"])
    enc = rebuild_encoder(ckpt["encoder"])
    m = create_method(cfg.method, enc, cfg.method_cfg, image_size=enc.kwargs.get("image_size"),
                      channels=enc.kwargs.get("in_chans"), **method_resources(cfg))
    m.load_state_dict(ckpt["method_state"])
    m.name = cfg.method
    return m.eval()


def _run_method(encoder: Any) -> Method | None:
    """The method of the run ``encoder`` names (a run folder or its ``last.pt``), when that
    method has held-out metrics of its own; None otherwise."""
    if isinstance(encoder, torch.nn.Module):
        return None
    p = Path(encoder)
    if p.is_dir():  # the run's config says which method, without reading the checkpoint
        if not (p / checkpoint.CHECKPOINT).is_file():
            return None
        name = read_run_config(p).get("method")
        return load_method(p) if name in METHODS and hasattr(METHODS.get(name), "heldout_metrics") else None
    if not p.is_file() or not checkpoint.is_torch_file(p):
        return None
    saved = checkpoint.load_checkpoint(p)
    if saved["format"] != checkpoint.FORMAT or not hasattr(METHODS.get(saved["config"]["method"]), "heldout_metrics"):
        return None
    return load_method(saved)


def _refuse_held(out: Path | None, names, overwrite: bool) -> list[str]:
    """The files ``names`` that ``out`` already holds; a one-line error when there are any
    and not ``overwrite``."""
    held = [n for n in names if out is not None and (out / n).exists()]
    if held and not overwrite:
        raise SelfSupError(f"{out} already holds {', '.join(held)}; choose another --out or add --overwrite")
    return held


def _encoder_and_split(encoder, data: Any, text, split: str):
    """The encoder, the source read for it and the split named ``split`` of it."""
    enc = _as_encoder(encoder)
    ds = dataset_for(enc, data, text)
    part = ds.train if split == "train" else ds.test
    if part is None:
        raise SelfSupError(f"{ds.name} has no {split!r} split; use --split train")
    return enc, ds, part


def embed(encoder: Encoder | str | Path, data: Any, out_dir: str | Path, *,
          split: str = "train", progress: bool = True, chunk: int = 4096, amp: bool = True,
          text: TextOptions | None = None, overwrite: bool = False) -> dict[str, Path]:
    """Write embeddings (N, D), labels and ids as .npy, and all of them as a CSV table
    (``csv`` quoting: ids may hold commas, quotes and newlines).

    Everything is streamed: embeddings go batch by batch into a memory-mapped ``.npy``,
    ids and CSV rows ``chunk`` at a time, so memory does not grow with the data.  The files
    are written in a temporary folder inside ``out_dir`` and moved into place at the end;
    earlier embeddings there are replaced only with ``overwrite``."""
    out = Path(out_dir)
    names = {"embeddings": "embeddings.npy", "labels": "labels.npy", "ids": "ids.npy", "table": "embeddings.csv"}
    _refuse_held(out, names.values(), overwrite)
    enc, ds, part = _encoder_and_split(encoder, data, text, split)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out)  # the partial folders and files of embeds killed before they finished
    tmp = out / f".embed-{os.getpid()}.partial"
    tmp.mkdir(exist_ok=True)
    try:
        _write_embeddings(enc, part, {k: tmp / n for k, n in names.items()}, progress=progress, chunk=chunk, amp=amp)
        for n in names.values():
            os.replace(tmp / n, out / n)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):  # only when empty: a folder this call made and filled with nothing
                out.rmdir()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {k: out / n for k, n in names.items()}


def _write_embeddings(enc, part, paths: dict[str, Path], *, progress: bool, chunk: int, amp: bool) -> None:
    """The four files, ``chunk`` samples at a time, every byte through selfsup's one write
    path (:mod:`selfsup.files`): the .npy headers first, then each chunk's features, ids
    and CSV rows."""
    from numpy.lib import format as npy
    from tqdm.auto import tqdm

    n, d = len(part), enc.num_features
    chunks = [np.arange(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    id_type = np.dtype(f"<U{max((len(str(i)) for c in chunks for i in part.ids[c]), default=1)}")
    atomic_write(paths["labels"], lambda f: np.save(f, np.asarray(part.labels)))
    with open_atomic(paths["embeddings"]) as feats_file, open_atomic(paths["ids"]) as ids_file, \
            open_atomic(paths["table"]) as table_file:
        for f, dtype, shape in ((feats_file, np.dtype(np.float32), (n, d)), (ids_file, id_type, (n,))):
            npy.write_array_header_1_0(f, {"descr": npy.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        text = io.TextIOWrapper(table_file, encoding="utf-8", newline="")
        table = csv.writer(text)
        table.writerow(["id", "label", *(f"f{i}" for i in range(d))])
        with tqdm(total=n, disable=not progress, desc="embeddings", unit="sample", leave=False) as bar:
            for c in chunks:
                feats = extract_features(enc, part.subset(c), amp=amp).numpy().astype(np.float32, copy=False)
                chunk_ids = np.asarray(part.ids[c], dtype=str)
                feats_file.write(np.ascontiguousarray(feats).tobytes())
                ids_file.write(chunk_ids.astype(id_type).tobytes())
                for i, name, row in zip(c, chunk_ids, feats):
                    table.writerow([name, int(part.labels[i]), *(f"{v:.6g}" for v in row)])
                bar.update(len(c))
        text.flush()
        text.detach()  # the file is closed (and renamed into place) by open_atomic


SELECT_IN_MEMORY = 2**30  # bytes of features select() holds in memory; a larger pool's go to a memory-mapped file


@dataclass
class Selection:
    """What :func:`select` chose, in the order chosen: the pool's ``ids``, the whole
    :class:`~selfsup.eval.selection.SelectionResult` (rows, clusters, scores, info) and the
    files written (none without ``out_dir``)."""
    ids: list[str]
    result: SelectionResult
    paths: dict[str, Path] = field(default_factory=dict)


def select(encoder: Encoder | str | Path, data: Any, budget: int, *, strategy: str = "typiclust",
           labelled: str | Path | list[str] | None = None, seed: int = 0,
           options: dict[str, Any] | list[str] | None = None, out_dir: str | Path | None = None,
           overwrite: bool = False, split: str = "train", text: TextOptions | None = None, progress: bool = True,
           amp: bool = True, projection: str = "tsne") -> Selection:
    """Choose ``budget`` samples of ``data``'s ``split`` (the unlabelled pool) to label
    next, from ``encoder``'s embeddings, with ``strategy`` (``typiclust``, ``probcover``,
    ``kcenter``, ``random``: :mod:`selfsup.eval.selection`; ``options`` are its own, a dict
    or ``["key=value", ...]``).

    ``labelled``: the ids already labelled -- a file (one id a line, or a CSV with an
    ``id`` column such as an earlier ``selection.csv``) or a list; they are never chosen
    and the new picks go around them.  The labels of the pool are never read.  With
    ``out_dir`` writes ``selection.csv``, ``selection.json``, a contact sheet
    ``selection.png`` (text: ``selection.md``) and ``selection_map.png``
    (:mod:`selfsup.output.selection`); files there already are replaced only with
    ``overwrite``.  A pool whose features exceed :data:`SELECT_IN_MEMORY` bytes is embedded
    into a memory-mapped file and read from it in chunks.

    Example::

        picks = selfsup.select("runs/simclr", "folder:photos", 100)
        picks.ids[:3]  # file paths under photos/, the most useful to label first
    """
    from selfsup.eval.selection import select_samples, strategy_options
    from selfsup.output import plots
    from selfsup.output import selection as selection_files

    options = parse_overrides(options) if isinstance(options, list) else dict(options or {})
    strategy_options(strategy, options)  # an unknown strategy or option fails before any data is read
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise SelfSupError(f"--budget must be a whole number of samples, at least 1, got {budget!r}")
    if projection not in plots.PROJECTIONS:
        raise SelfSupError(unknown("projection", projection, plots.PROJECTIONS))
    out = Path(out_dir) if out_dir is not None else None
    held = _refuse_held(out, selection_files.FILES.values(), overwrite)
    enc, ds, part = _encoder_and_split(encoder, data, text, split)
    n = len(part)
    ids = np.asarray(part.ids[np.arange(n)]).astype(str)
    mask = labelled_rows(labelled, ids)
    free = n - int(mask.sum())
    if budget > free:
        raise SelfSupError(f"--budget {budget} is more than the {free} unlabelled samples in {ds.name}; choose at "
                           f"most {free}")
    with _feature_store(out, n, enc.num_features) as store:
        feats = extract_features(enc, part, progress=progress, amp=amp, out=store)
        pool = store if store is not None else feats
        result = select_samples(strategy, pool, budget, labelled=mask, seed=seed, **options)
        paths = {}
        if out is not None:
            for name in held:  # --overwrite: no file of an earlier selection is left beside this one's
                (out / name).unlink()
            source = type(encoder).__name__ if isinstance(encoder, torch.nn.Module) else str(encoder)
            paths = selection_files.write_selection(out, result, ids, part, pool, mask, projection=projection,
                                                    about={"data": ds.name, "split": split, "encoder": source})
    return Selection([str(ids[i]) for i in result.indices], result, paths)


@contextlib.contextmanager
def _feature_store(out: Path | None, n: int, dim: int):
    """None when ``n`` features of ``dim`` floats fit in :data:`SELECT_IN_MEMORY`; otherwise a
    memory-mapped (n, dim) float32 ``.npy`` in a temporary folder (inside ``out`` when
    given), removed afterwards."""
    import tempfile

    if n * dim * 4 <= SELECT_IN_MEMORY:
        yield None
        return
    if out is None:
        with tempfile.TemporaryDirectory() as folder:
            yield np.lib.format.open_memmap(Path(folder) / "features.npy", mode="w+", dtype=np.float32, shape=(n, dim))
        return
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out)  # the folders of selections killed before they finished
    folder = out / f".embed-{os.getpid()}.partial"
    folder.mkdir(exist_ok=True)
    try:
        yield np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def labelled_rows(labelled: str | Path | list[str] | None, ids: np.ndarray) -> np.ndarray:
    """The mask of the pool's rows whose id is in ``labelled`` (a file, see :func:`read_ids`,
    or a list); an id not in the pool is an error naming it."""
    mask = np.zeros(len(ids), dtype=bool)
    if labelled is None:
        return mask
    names = read_ids(labelled) if isinstance(labelled, (str, Path)) else [str(x) for x in labelled]
    where = f"--labelled {labelled}" if isinstance(labelled, (str, Path)) else "labelled"
    row = {name: i for i, name in enumerate(ids)}
    missing = [x for x in names if x not in row]
    if missing:
        example = f", e.g. {ids[0]!r}" if len(ids) else ""
        raise SelfSupError(f"{where}: {len(missing)} of its {len(names)} ids are not in the pool (first: "
                           f"{missing[0]!r}); give the ids as selection.csv writes them{example}")
    mask[[row[x] for x in names]] = True
    return mask


def read_ids(path: str | Path) -> list[str]:
    """The ids in ``path``: a CSV whose header has an ``id`` column (an earlier
    ``selection.csv``), or else one id a line (blank lines skipped)."""
    p = Path(path)
    if not p.is_file():
        raise SelfSupError(f"--labelled {path}: no such file")
    try:
        content = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SelfSupError(f"--labelled {path} is not UTF-8 text; give one id a line or a CSV with an id column") \
            from None
    first = next(csv.reader(io.StringIO(content.split("\n", 1)[0])), [])
    header = [f.strip() for f in first]
    if "id" in header:
        col = header.index("id")
        return [r[col] for r in list(csv.reader(io.StringIO(content)))[1:] if len(r) > col and r[col].strip()]
    return [line.strip() for line in content.splitlines() if line.strip()]


SUMMARY_KEYS = ("effective_rank", "dims_for_90pct_variance", "z_std", "collapsed", "alignment", "relative_alignment",
                "uniformity")


def inspect_encoder(encoder: Encoder | str | Path, data: Any = "shapes", *,
                    out_dir: str | Path | None = None, transfer_to: str | None = None,
                    max_samples: int = 5000, projection: str = "tsne",
                    text: TextOptions | None = None) -> dict[str, Any]:
    """Diagnostics of ``encoder`` next to the same backbone at random initialisation.

    Returns ``{"trained": ..., "random_init": ..., "summary": {metric: [trained, random]}}``;
    with ``out_dir`` also writes inspect.json, a 2-D map by class, maps by each ground-truth
    factor and a nearest-neighbour retrieval grid.
    """
    from selfsup.eval import diagnostics
    from selfsup.output import plots

    if projection not in plots.PROJECTIONS:
        raise SelfSupError(unknown("projection", projection, plots.PROJECTIONS))
    enc = _as_encoder(encoder).cpu().eval()
    ds = dataset_for(enc, data, text)
    rnd = fresh_copy(enc, 0).eval()
    trained = diagnostics.inspect(enc, ds, max_samples=max_samples, transfer_to=transfer_to, random_encoder=rnd)
    random_init = diagnostics.inspect(rnd, ds, max_samples=max_samples)
    summary = {k: [trained[k], random_init[k]] for k in SUMMARY_KEYS}
    for name, key in (("dci", "disentanglement"), ("dci", "completeness"), ("dci", "informativeness"),
                      ("mig", "mig")):
        if name in trained:
            summary[key if name == "dci" else "mig"] = [trained[name][key], random_init[name][key]]
    if "transfer" in trained:
        summary["transfer"] = trained["transfer"]
    result = {"trained": trained, "random_init": random_init, "summary": summary,
              "columns": ["trained", "random init"]}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "inspect.json", json.dumps(result, indent=2))
        part = ds.test if ds.test is not None else ds.train
        sub = np.random.default_rng(0).permutation(len(part))[:min(2000, len(part))]
        shown = part.subset(sub)
        feats = extract_features(enc, shown).numpy()
        xy = plots.project_2d(feats, projection)
        if part.has_labels:
            plots.embedding_map({f"{projection} of the representation": xy}, shown.labels, part.classes,
                                out / "map_by_class.png")
        if part.factors is not None:
            plots.factor_maps(xy, shown.factors, part.factor_names, out / "map_by_factor.png")
        q = feats[:8] / np.linalg.norm(feats[:8], axis=1, keepdims=True)
        allf = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        nn_idx = np.argsort(-(q @ allf.T), axis=1)[:, 1:9]  # (8, 8), skipping the query itself
        if isinstance(shown, TextSet):
            plots.retrieval_list(shown.texts[:8], shown.texts[nn_idx], out / "retrieval.md")
        else:
            images = shown.read(np.arange(len(shown)))  # (<= 2000, H, W, C)
            plots.retrieval_grid(images[:8], images[nn_idx], out / "retrieval.png")
    return result


def report(run_dir: str | Path, out: str | Path | None = None, *, summarize: bool = True,
           log: Callable[[str], None] = print) -> Path:
    """Write ``RUN/report.html`` (:func:`selfsup.output.report.write_report`), leading with
    the run's summary: kNN on its own data's test split against the same encoder at random
    initialisation, and a 2-D map of the test embeddings.  They are computed once (saved
    as ``summary.json`` and ``summary_map.png``) when the run has labelled data to compute
    them on; otherwise the report says how to add an evaluation."""
    from selfsup.output import plots
    from selfsup.output.report import SUMMARY, SUMMARY_MAP, write_report

    run = Path(run_dir)
    if not run.is_dir():
        raise SelfSupError(f"no run folder at {run}")
    if summarize and not (run / SUMMARY).is_file() and read_run_config(run):
        summary = _summary(run, log)
        if summary is not None:
            result, xy, labels, classes = summary
            atomic_write_text(run / SUMMARY, json.dumps(result, indent=2))
            if xy is not None:
                plots.embedding_map({"t-SNE of the test embeddings": xy}, labels, classes, run / SUMMARY_MAP)
    return write_report(run, out)


def _summary(run: Path, log: Callable[[str], None]):
    from selfsup.output import plots

    cfg = from_dict(read_run_config(run))
    if cfg.data.source.startswith(PYTHON_SOURCE):
        return {"note": "the run was trained on a Python object: evaluate it with selfsup.evaluate(run, data)"}, \
            None, None, None
    enc = load_encoder(run, device="cpu")
    ds = dataset_for(enc, cfg.data.source, text_options(cfg))
    if not ds.train.has_labels:
        return {"note": f"{ds.name} has no labels: evaluate the run on a labelled source with selfsup evaluate"}, \
            None, None, None
    log(f"summarising {run}: kNN on {ds.name} against random init ...")
    ds = labelled_with_test(ds, "summarise")
    knn = _frozen_probes(enc, ds, k=20, temperature=0.07, linear=False, progress=False, amp=True)
    rnd = _frozen_probes(fresh_copy(enc, cfg.train.seed).eval(), ds, k=20, temperature=0.07, linear=False,
                         progress=False, amp=True)
    result = {"data": ds.name, "test_split": ds.test_origin, "knn_top1": knn["knn_top1"],
              "random_init_knn_top1": rnd["knn_top1"], "knn_protocol": knn["knn_protocol"]}
    sub = np.random.default_rng(0).permutation(len(ds.test))[:1000]
    shown = ds.test.subset(np.sort(sub))
    xy = plots.project_2d(extract_features(enc, shown).numpy(), "tsne")
    return result, xy, shown.labels, ds.train.classes
