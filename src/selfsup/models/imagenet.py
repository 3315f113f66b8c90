"""Any timm or torchvision ImageNet model, with its weights from a local file:
``timm:NAME`` and ``torchvision:ARCH``.

The model is the library's own, built without weights
(``timm.create_model(NAME, pretrained=False, num_classes=0)``,
``torchvision.models.get_model(ARCH, weights=None)`` with its classifier replaced by
``Identity``), and fed as its weights were trained, like ``pretrained:NAME``
(:class:`~selfsup.models.backbones.ResizedInput`): ``[0, 1]`` images of any size are
resized to the model's input size and normalised with its own mean and std -- timm's
``pretrained_cfg`` (``input_size``, ``mean``, ``std``), torchvision's default weights'
transforms (the crop size, e.g. 224, and ImageNet's mean and std) -- and grey images are
repeated to 3 channels.  The output is the pooled features, ``(N, num_features)``.

The weights come from a file (``weights=``; ``--weights`` / ``--teacher-weights`` on the
command line): safetensors, or a torch file read with ``weights_only=True`` (never an
arbitrary pickle).  A state dict that still holds the ImageNet classifier is fine: those
keys are dropped.  Anything else that does not fit -- missing or unexpected keys, other
shapes, the weights of another model -- is refused in one line.  Without a file, the
weights are used only when they are already on this machine, where the library itself
would have put them: timm's in the Hugging Face cache (``HF_HUB_CACHE``; ``model.safetensors``
or ``pytorch_model.bin`` of the model's ``hf_hub_id``), torchvision's in torch's hub cache
(``$TORCH_HOME/hub/checkpoints``).  Nothing is ever downloaded: a model whose weights are
not there is a one-line error saying which file to fetch on a machine with internet.

Usage::

    enc = load_imagenet("timm:resnet18.a1_in1k", "resnet18.safetensors")   # [0, 1] images -> (N, 512)
    # selfsup evaluate timm:resnet18.a1_in1k --weights resnet18.safetensors --data digits
    # selfsup pretrain --method distill --teacher torchvision:resnet18 --teacher-weights resnet18-f37072fd.pth
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from selfsup.errors import SelfSupError
from selfsup.models.backbones import CLASSIFIER_NAMES, Encoder, create_backbone, library_backbone
from selfsup.models.pretrained import read_weights

PREFIXES = ("timm:", "torchvision:")
HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's Hugging Face repositories hold


def is_imagenet(spec: object) -> bool:
    """Whether ``spec`` names a library model (``timm:NAME`` / ``torchvision:ARCH``)."""
    return isinstance(spec, str) and spec.startswith(PREFIXES) and len(spec.partition(":")[2]) > 0


def _source(spec: str) -> tuple[str, str, str]:
    """Where the library keeps the weights of ``spec``: ``("hf", repo id, file)`` for timm,
    ``("url", url, file name)`` for torchvision; a one-line error for an unknown model or
    one without ImageNet weights."""
    library_backbone(spec)  # an unknown model: a one-line error
    library, _, model = spec.partition(":")
    if library == "timm":
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(model)
        if cfg is None or not cfg.hf_hub_id:
            raise SelfSupError(f"timm has no ImageNet weights for {model!r} (no Hugging Face repository in its "
                               "pretrained_cfg); pick a model that `timm.list_models(pretrained=True)` lists")
        return "hf", cfg.hf_hub_id, cfg.hf_hub_filename or HF_FILES[0]
    import torchvision

    url = torchvision.models.get_model_weights(model).DEFAULT.url
    return "url", url, url.rsplit("/", 1)[-1]


def cached_weights(spec: str) -> Path | None:
    """The weight file of ``spec`` when the library's cache already holds it, None
    otherwise; looks, never downloads."""
    kind, where, name = _source(spec)
    if kind == "hf":
        from huggingface_hub import try_to_load_from_cache

        for file in dict.fromkeys((name, *HF_FILES)):
            found = try_to_load_from_cache(where, file)
            if isinstance(found, str) and Path(found).is_file():  # otherwise None, or a marker of a known absence
                return Path(found)
        return None
    found = Path(torch.hub.get_dir()) / "checkpoints" / name
    return found if found.is_file() else None


def how_to_get(spec: str) -> str:
    """Which file ``spec`` needs and how to fetch it on a machine with internet."""
    kind, where, name = _source(spec)
    if kind == "hf":
        return (f"download {name} of https://huggingface.co/{where} on a machine with internet (e.g. `hf download "
                f"{where} {name}`)")
    return f"download {where} on a machine with internet"


def weights_path(spec: str, weights: str | Path | None = None, *, option: str = "--weights") -> Path:
    """The weight file of ``spec``: ``weights`` when given, else the library's cached copy;
    a one-line error when there is none (``option``: the command-line option that takes
    the file, named in the error)."""
    library_backbone(spec)  # an unknown model first: a one-line error
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise SelfSupError(f"{option} {weights}: no such file")
        return path
    cached = cached_weights(spec)
    if cached is None:
        where = ("Hugging Face cache" if spec.startswith("timm:") else "torch hub cache") + " of this machine"
        raise SelfSupError(f"{spec} needs its ImageNet weights, which are not in the {where} (nothing is "
                           f"downloaded): {how_to_get(spec)} and pass the file with {option} FILE")
    return cached


def spec_error(spec: str, weights: str | Path | None = None, *, option: str = "--weights") -> str | None:
    """Why ``spec`` (with ``weights``) cannot be loaded, found without building the model:
    an unknown model, a missing file, no file and nothing cached.  None when it may load."""
    try:
        weights_path(spec, weights, option=option)
    except SelfSupError as err:
        return str(err)
    return None


def _classifier_prefixes(net: nn.Module) -> tuple[str, ...]:
    """The name prefixes of the classifier's keys in a library state dict."""
    names = list(CLASSIFIER_NAMES)
    cfg = getattr(getattr(net, "library_model", None), "pretrained_cfg", None) or {}
    head = cfg.get("classifier") if isinstance(cfg, dict) else None
    names += [head] if isinstance(head, str) else list(head or ())  # timm: e.g. "fc", ("head", "head_dist")
    names.append(getattr(net, "classifier", ""))  # torchvision: the module made Identity
    return tuple(f"{n}." for n in dict.fromkeys(names) if n)


def load_weights(encoder: Encoder, path: str | Path, spec: str) -> str:
    """Load the library state dict in ``path`` into the model of ``encoder`` (built by
    :func:`load_imagenet`); its classifier's keys are dropped.  Returns what was loaded; a
    one-line error naming the keys when the file is not this model's."""
    state = read_weights(path)
    model = encoder.net.library_model
    own = model.state_dict()
    head = _classifier_prefixes(encoder.net)
    state = {k: v for k, v in state.items() if k in own or not k.startswith(head)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        detail = "; ".join(f"{label} {len(keys)}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for label, keys in (("missing", missing), ("unexpected", unexpected),
                                               ("other shape", shapes)) if keys)
        raise SelfSupError(f"{path} does not fit {spec} ({detail}); it holds the weights of another model")
    model.load_state_dict(state)
    return f"{len(state)} tensors from {path}"


def load_imagenet(spec: str, weights: str | Path | None = None, *, option: str = "--weights") -> Encoder:
    """The encoder ``timm:NAME`` / ``torchvision:ARCH`` with its ImageNet weights from
    ``weights`` (or the library's cache, see the module docstring), in eval mode on the
    CPU: ``[0, 1]`` images ``(N, C, H, W)`` of any size -> ``(N, num_features)``."""
    if not is_imagenet(spec):
        raise SelfSupError(f"{spec!r} is not a library model; give timm:NAME or torchvision:ARCH")
    path = weights_path(spec, weights, option=option)  # before any model is built
    # image_size / in_chans None: any size, grey or RGB (the model resizes; see ResizedInput)
    enc = create_backbone(spec, in_chans=None, image_size=None, input_size=0)
    load_weights(enc, path, spec)
    return enc.eval()

