"""Typed run configuration: dataclasses with defaults and units, YAML and overrides.

A run is described by one :class:`RunConfig`.  It is built from defaults, then an
optional preset, then an optional YAML file, then ``key=value`` overrides with dotted
keys (``optim.base_lr=0.3``, ``method_cfg.temperature=0.2``), and saved with the run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import SelfSupError


@dataclass
class DataConfig:
    source: str = "shapes"             # data source: a registered name with its argument, e.g. folder:PATH (`selfsup list`)
    image_size: int | None = None      # side in px; None = the source's native size
    num_train: int | None = None       # cap on training images (None = all)
    strict: bool = False               # unreadable image files are an error instead of skipped
    download: bool = False             # allow torchvision sources to download (never in tests)
    cache_dir: str | None = None       # where generated data and decoded folders are cached (default $SELFSUP_CACHE or ~/.cache/selfsup)
    in_memory: bool = False            # folders: hold the decoded images in memory instead of reading the disk cache
    # folders: how values of more than 8 bits (16-bit PNG/TIFF, DICOM after its rescale) become 0..255 --
    # auto = from the lowest to the highest value of the folder's deeper files (8-bit files untouched);
    # max = 0 to the highest value; container = each file's full range (0..65535 for 16 bits);
    # LO,HI = a fixed window in the files' units, e.g. -1000,400 (CT, Hounsfield units), applied to every file
    window: str = "auto"
    channels: int | None = None        # folders: channels per image; None = 3 (grey and colour as RGB) or the band count of multi-band TIFFs; 1 = grey; 4 keeps RGBA alpha as data
    tokenizer: str | None = None       # text: a local tokenizer folder (None = train WordPiece on the train split)
    max_length: int = 128              # text: tokens per sample, [CLS] and [SEP] included; longer ones are truncated
    vocab_size: int = 8192             # text: WordPiece vocabulary size when training one
    text_column: str = "text"          # text: the text column of .jsonl / .csv / hf sources
    label_column: str = "label"        # text: the (optional) label column
    text_unit: str = "line"            # text: .txt files give one sample per "line" or per "file"


@dataclass
class OptimConfig:
    name: str = "adamw"                # a registered optimizer (`selfsup list`)
    base_lr: float = 1e-3              # learning rate per 256 samples (see lr_scaling)
    lr_scaling: str = "linear"         # a registered rule (`selfsup list`): linear = base_lr*batch/256
    weight_decay: float = 1e-4         # decoupled (adamw) or L2 (sgd/lars); never on biases and norms
    weight_decay_end: float | None = None  # cosine schedule of weight decay to this value (None = constant)
    momentum: float = 0.9              # sgd / lars momentum
    betas: tuple[float, float] = (0.9, 0.999)  # adamw betas
    eps: float = 1e-8                  # adamw epsilon (BERT: 1e-6)
    schedule: str = "cosine"           # lr after warm-up, a registered schedule (`selfsup list`), to min_lr
    warmup_epochs: float = 1.0         # linear warm-up length in epochs (reaches lr at its last step)
    min_lr: float = 0.0                # cosine floor, absolute
    clip_grad: float = 0.0             # max global grad norm (0 = off)


@dataclass
class TrainConfig:
    epochs: int = 20                   # passes over the training images
    batch_size: int = 256              # images per step (each yields the method's views)
    seed: int = 0                      # seeds weights, data order and augmentations
    device: str = "auto"               # auto | cpu | cuda | cuda:1 | mps
    amp: bool = True                   # bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX); false = fp32
    compile: bool = False              # torch.compile the encoder (a long start-up; docs/speed.md says when it pays)
    threads: int = 0                   # torch CPU threads (0 = torch's default)
    out_dir: str = "runs/latest"       # run directory: config, metrics, checkpoints
    checkpoint_every: int = 0          # also checkpoint every n steps (0 = only at epoch ends)
    log_every: int = 10                # write a metrics line every n steps
    max_steps: int | None = None       # stop (and checkpoint) after this many steps; resume later
    progress: bool = True              # show a progress bar
    sync_bn: bool = False              # under torchrun on CUDA: BatchNorm statistics over the global batch (SyncBatchNorm)
    tensorboard: bool = False          # also log the metrics as TensorBoard events in RUN/tensorboard (pip install tensorboard)
    monitor_every: int = 1             # epochs between online-monitor checks (kNN on labelled data, effective rank); 0 = off
    monitor_samples: int = 1000        # training samples the online monitor embeds at each check


@dataclass
class RunConfig:
    method: str = "simclr"             # see `selfsup list`
    backbone: str = "small_cnn"        # see `selfsup list`
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method_cfg: dict[str, Any] = field(default_factory=dict)    # the method's own options
    backbone_cfg: dict[str, Any] = field(default_factory=dict)  # extra backbone builder kwargs
    init: str | None = None            # start from: text, a local Hugging Face model folder; images, a weights file (export or state dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _set_dotted(cfg: Any, key: str, value: Any) -> None:
    parts = key.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(obj, dict):
            if last:
                obj[part] = value
                return
            obj = obj.setdefault(part, {})
            continue
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if part not in fields:
            where = ".".join(parts[:i]) or "config"
            raise SelfSupError(f"unknown option {key!r}: {where} has {', '.join(sorted(fields))}")
        if last:
            setattr(obj, part, coerce(getattr(obj, part), value, key, fields[part].type))
        else:
            obj = getattr(obj, part)


def coerce(current: Any, value: Any, key: str, annotation: Any = "") -> Any:
    """Give ``value`` the type of the default it replaces (YAML already parsed it); a
    default of None takes the first type its field's ``annotation`` names (``int | None``)."""
    if dataclasses.is_dataclass(current):
        first = dataclasses.fields(current)[0].name
        raise SelfSupError(f"{key!r} is a section of options, not a value; set one of them, e.g. {key}.{first}=...")
    if isinstance(current, dict):
        if not isinstance(value, dict):
            raise SelfSupError(f"option {key!r} takes a mapping of options (e.g. {key}.NAME=VALUE), not {value!r}")
        return value
    if current is None:
        current = {"float": 0.0, "int": 0}.get(str(annotation).split(" ")[0])
    if value is None or current is None:
        return value
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise SelfSupError(f"option {key!r} takes true or false, not {value!r}")
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(current):
            raise SelfSupError(f"option {key!r} takes {len(current)} numbers, e.g. {list(current)}")
        return tuple(float(v) for v in value)
    if isinstance(current, (int, float)):
        if isinstance(value, str):  # YAML 1.1 reads 8e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SelfSupError(f"option {key!r} takes a number, not {value!r}")
        if isinstance(current, int) and not float(value).is_integer():
            raise SelfSupError(f"option {key!r} takes a whole number, not {value!r}")
        return type(current)(value)
    if isinstance(current, str):
        return str(value)
    return value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=v", ...]`` -> ``{"a.b": v}`` with values parsed as YAML."""
    parsed: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SelfSupError(f"override {item!r} must look like key=value, e.g. optim.base_lr=0.1")
        k, v = item.split("=", 1)
        parsed[k.strip()] = yaml.safe_load(v) if v.strip() else None
    return parsed


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any] | list[str]) -> RunConfig:
    """Apply ``{"a.b": v}`` or ``["a.b=v", ...]`` in order."""
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    for key, value in overrides.items():
        _set_dotted(cfg, key, value)
    return cfg


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file as dotted overrides."""
    p = Path(path)
    if not p.is_file():
        raise SelfSupError(f"config file {str(p)!r} not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise SelfSupError(f"config file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SelfSupError(f"config file {str(p)!r} must hold a mapping of options")
    return _flatten(data)


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.yaml`` a run folder holds, as a dict; ``{}`` when it is absent or unreadable."""
    try:
        data = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def from_dict(d: dict[str, Any]) -> RunConfig:
    """Rebuild a :class:`RunConfig` saved with :meth:`RunConfig.to_dict`."""
    return apply_overrides(RunConfig(), _flatten(d))
