"""Backbones: one registry, one contract.

Every backbone is an ``nn.Module`` that maps a batch -- images ``(N, C, H, W)``, or
token ids ``(N, L)`` for the text backbones of :mod:`selfsup.models.text` -- to a pooled
representation ``h`` of shape ``(N, num_features)``: the vector every evaluation
(kNN, linear probe, fine-tuning, embedding) uses.  Every encoder also has ``name``,
``kwargs`` (enough to rebuild it) and ``data_options()`` (what a data source needs to
give it its input).  Builders take ``in_chans`` and
``image_size`` so the same name works for 8 px digits, 32 px shapes and 224 px photos.
The vision transformers (all four are :class:`selfsup.models.vit.ViT`) also offer
``forward_tokens(x) -> (N, 1 + L, D)`` (CLS first), ``forward_masked`` (MAE's encoder
pass) and ``patch_size`` for methods and pictures that need patch tokens.

Backbones that are a library's own model (:class:`LibraryNet`: torchvision, timm, and
the ViTs, which are timm's ``VisionTransformer``) add ``library_model`` and ``recipe()``,
so that their weights export as that library's plain state dict.  With ``input_size``
(``backbone_cfg.input_size``) a ``timm:NAME`` / ``torchvision:ARCH`` backbone is the
ImageNet model as its weights were trained (:class:`ResizedInput`: RGB at that size, the
model's own normalisation), which :mod:`selfsup.models.imagenet` fills from a weight file.

:class:`Encoder` wraps a backbone with the input normalisation, so an exported encoder
takes plain ``[0, 1]`` images and needs nothing else to be used.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.errors import SelfSupError
from selfsup.registry import Registry

BACKBONES = Registry("backbone")


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``module`` in eval mode (BatchNorm running statistics, no dropout),
    then put it back in the mode it was in, also when the block raises."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


class Encoder(nn.Module):
    """Normalisation + backbone. ``forward(x in [0,1]) -> (N, num_features)``."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float], *, name: str = "",
                 kwargs: dict | None = None):
        super().__init__()
        self.net = net
        self.name = name  # registry name, so that the encoder can be rebuilt from a file
        self.kwargs = dict(kwargs or {})
        self.num_features = net.num_features
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def data_options(self) -> dict:
        """What a data source needs to give this encoder its input: its image size and, when
        its run set them, the window and channel count a folder's images are decoded with."""
        return {"image_size": self.kwargs.get("image_size"), **self.kwargs.get("data", {})}

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self.net, "forward_tokens"):
            raise TypeError(f"backbone {self.name!r} has no patch tokens (use a ViT backbone)")
        return self.net.forward_tokens(self.normalize(x))


def backbone_builder(name: str) -> Callable[..., nn.Module]:
    """The builder of a registered backbone, or of ``torchvision:ARCH`` / ``timm:NAME``."""
    return library_backbone(name) or BACKBONES.get(name)


def modality(name: str) -> str:
    """What backbone ``name`` takes: "image" (the default) or "text"."""
    if library_backbone(name) is not None:
        return "image"
    return BACKBONES.meta(name).get("modality", "image")


def takes_patch_size(builder: Callable[..., nn.Module]) -> bool:
    """Whether a backbone builder has a ``patch_size`` argument (the ViTs), which its spec records."""
    return "patch_size" in inspect.signature(builder).parameters


def create_backbone(name: str, *, in_chans: int = 3, image_size: int = 32,
                    mean: list[float] | None = None, std: list[float] | None = None,
                    data: dict | None = None, **kwargs) -> nn.Module:
    """Build the registered backbone ``name``: an image backbone wrapped in an
    :class:`Encoder` with the normalisation ``mean``/``std`` (one value per channel); a
    text backbone (see :mod:`selfsup.models.text`) takes ``tokenizer``, ``max_length`` and
    its shape in ``kwargs`` and is its own encoder.  ``data`` (``window``, ``channels``:
    how the run decoded a folder's images) is recorded in the spec for
    :meth:`Encoder.data_options`; it does not change the network."""
    builder = backbone_builder(name)
    if modality(name) == "text":
        return builder(**kwargs)
    net = builder(in_chans=in_chans, image_size=image_size, **kwargs)
    if takes_patch_size(builder):  # the patch size chosen, so a later default cannot change a saved encoder
        kwargs = {**kwargs, "patch_size": net.patch_size}
    kwargs = {**kwargs, **getattr(net, "spec_kwargs", {})}  # what else the backbone chose (a pretrained input size)
    if getattr(net, "normalization", None) is not None:  # a pretrained model's own, whatever the data's
        mean, std = net.normalization
    mean = list(mean) if mean is not None else [0.5] * in_chans
    std = list(std) if std is not None else [0.25] * in_chans
    spec = dict(in_chans=in_chans, image_size=image_size, mean=mean, std=std, **kwargs)
    if data:
        spec["data"] = dict(data)
    return Encoder(net, mean, std, name=name, kwargs=spec)


def rebuild_encoder(spec: dict, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The encoder described by ``spec`` (``{"name", "kwargs"}`` as saved with a run or an
    export) in eval mode: with ``state`` loaded when given, freshly initialised (from the
    current torch seed) otherwise."""
    kwargs = dict(spec["kwargs"])
    if ("patch_size" not in kwargs and 16 <= (kwargs.get("image_size") or 0) < 32
            and takes_patch_size(backbone_builder(spec["name"]))):
        kwargs["patch_size"] = 4  # saved before ViTs took 2 px patches by default from 16 to 31 px
    enc = create_backbone(spec["name"], **kwargs)
    if state is not None:
        enc.load_state_dict(state)
    return enc.eval()


# --- small CNN: the CPU default ------------------------------------------------------


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Four conv stages (widths w, 2w, 4w, 8w), stride-2 between stages, global average pool.

    About 0.3 M parameters at the default ``width=16`` (128-d features; ~1300 images/s
    through a SimCLR step on 2 CPU cores at 32 px), 1.2 M at ``width=32`` (~2.7x slower).
    """

    def __init__(self, in_chans: int = 3, image_size: int = 32, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(in_chans, w),
            _conv_bn(w, 2 * w, stride=2 if image_size > 8 else 1),
            _conv_bn(2 * w, 2 * w),
            _conv_bn(2 * w, 4 * w, stride=2),
            _conv_bn(4 * w, 4 * w),
            _conv_bn(4 * w, 8 * w, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # (N, 8w)
        )
        self.num_features = 8 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@BACKBONES.register("small_cnn", help="6-layer CNN, 8*width-d features (CPU default: width 16, 0.3M params)")
def small_cnn(*, in_chans: int, image_size: int, width: int = 16) -> nn.Module:
    return SmallCNN(in_chans, image_size, width)


# --- torchvision and timm models ----------------------------------------------------

CLASSIFIER_NAMES = ("fc", "classifier", "heads", "head")  # where torchvision keeps a model's classifier


class LibraryNet(nn.Module):
    """Base of the backbones that are a library's own model (``library_model``): they
    export that model's plain state dict and say how to rebuild and feed it: ``recipe()``
    is ``{"build": [...], "input": ...}``, the lines of Python that build the model as
    ``m`` and what ``m`` takes (and ``"resize": [H, W]`` for a model fed at a size of its
    own, see :mod:`selfsup.models.pretrained`).  Like every backbone they have ``num_features``;
    ``forward(x)`` equals the rebuilt library model's output on ``x`` fed as ``"input"``
    says."""

    library = ""  # "torchvision" or "timm"

    @property
    def library_model(self) -> nn.Module:
        raise NotImplementedError

    def recipe(self) -> dict:
        raise NotImplementedError


class TorchvisionNet(LibraryNet):
    """A torchvision classification model without its classifier (``fc``, ``classifier``
    or ``heads`` becomes ``Identity``; ``num_features`` is that classifier's input).

    ResNets get the CIFAR stem for inputs of at most 64 px (first conv 3x3 stride 1, no
    max-pool: the recipe of SimCLR/MoCo), and a first conv for ``in_chans`` when it is not
    3; other models take grey images repeated to 3 channels, and any other channel count
    through their first 3-channel convolution rebuilt for ``in_chans`` (its shape otherwise
    kept).  Weights are randomly initialised: nothing is downloaded.
    """

    library = "torchvision"

    def __init__(self, arch: str, in_chans: int, image_size: int):
        super().__init__()
        import torchvision  # here, not at the top: it takes seconds to import and most runs never need it

        model = torchvision.models.get_model(arch, weights=None)
        self.arch, self.edits, self.repeat = arch, [], 1
        if arch.startswith(("resnet", "resnext", "wide_resnet")):
            width = model.conv1.out_channels
            if image_size <= 64:
                model.conv1 = nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False)
                model.maxpool = nn.Identity()
                self.edits = [f"m.conv1 = torch.nn.Conv2d({in_chans}, {width}, 3, stride=1, padding=1, bias=False)",
                              "m.maxpool = torch.nn.Identity()"]
            elif in_chans != 3:
                model.conv1 = nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False)
                self.edits = [f"m.conv1 = torch.nn.Conv2d({in_chans}, {width}, 7, stride=2, padding=3, bias=False)"]
        elif in_chans == 1:
            self.repeat = 3  # grey -> RGB, as runs before other channel counts were taken did
        elif in_chans != 3:
            self.edits = [_replace_stem(model, arch, in_chans)]
        name = next((n for n in CLASSIFIER_NAMES if isinstance(getattr(model, n, None), nn.Module)), None)
        if name is None:
            raise SelfSupError(f"torchvision:{arch} has no classifier named {' / '.join(CLASSIFIER_NAMES)}; "
                               "it is not a classification model")
        head = getattr(model, name)
        self.classifier = name  # the classifier's module name, whose keys a library state dict still holds
        linear = head if isinstance(head, nn.Linear) else next(m for m in head.modules() if isinstance(m, nn.Linear))
        self.num_features = linear.in_features
        setattr(model, name, nn.Identity())
        self.edits.append(f"m.{name} = torch.nn.Identity()")
        self.net = model  # the attribute name keeps the parameter names of earlier runs

    @property
    def library_model(self) -> nn.Module:
        return self.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat > 1:
            x = x.repeat(1, self.repeat, 1, 1)  # grey -> RGB
        return self.net(x)  # (N, num_features)

    def recipe(self) -> dict:
        return {"build": [f"m = torchvision.models.{self.arch}(weights=None)", *self.edits],
                "input": "grey images repeated to 3 channels" if self.repeat > 1 else "as the encoder"}


class TimmNet(LibraryNet):
    """Any timm model, ``timm.create_model(NAME, num_classes=0, in_chans=...)`` (and
    ``img_size`` for models that take one): pooled features, ``num_features`` from timm."""

    library = "timm"

    def __init__(self, name: str, in_chans: int, image_size: int, **kwargs):
        super().__init__()
        import timm

        self.timm_name, self.timm_kwargs = name, {"num_classes": 0, "in_chans": in_chans, **kwargs}
        try:
            self.model = timm.create_model(name, pretrained=False, img_size=image_size, **self.timm_kwargs)
            self.timm_kwargs["img_size"] = image_size
        except TypeError:  # a model without an input size (CNNs)
            self.model = timm.create_model(name, pretrained=False, **self.timm_kwargs)
        self.num_features = self.model.num_features

    @property
    def library_model(self) -> nn.Module:
        return self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (N, num_features)

    def recipe(self) -> dict:
        args = ", ".join(f"{k}={v!r}" for k, v in self.timm_kwargs.items())
        return {"build": [f"m = timm.create_model({self.timm_name!r}, pretrained=False, {args})"],
                "input": "as the encoder"}


class ResizedInput:
    """Mixin of a :class:`LibraryNet` fed as its ImageNet weights were trained: square
    ``input_size`` px RGB images, normalised with the model's own mean and std
    (``normalization``, which :func:`create_backbone` gives the :class:`Encoder` instead of
    the data's).  Input of any size is resized to ``input_size`` (bilinear, antialiased) and
    grey input repeated to 3 channels, so any image source can feed it."""

    def feed_as_trained(self, input_size: int, mean, std) -> None:
        if not (isinstance(input_size, int) and input_size >= 16):
            raise SelfSupError(f"backbone_cfg.input_size must be a side of at least 16 px, got {input_size!r}")
        self.input_size = input_size
        self.normalization = (list(mean), list(std))  # the model's own, whatever the data's
        self.spec_kwargs = {"input_size": input_size}  # kept in the encoder's spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return super().forward(x)

    def recipe(self) -> dict:
        return {**super().recipe(), "resize": [self.input_size, self.input_size],
                "input": f"grey images repeated to 3 channels; resized to {self.input_size}x{self.input_size} px "
                         "(bilinear, antialias, align_corners=False) when of another size"}


def _rgb_only(spec: str, in_chans: int | None) -> None:
    if in_chans not in (None, 1, 3):
        raise SelfSupError(f"{spec} with its ImageNet input takes RGB or grey images, not {in_chans} channels")


class ImageNetTimmNet(ResizedInput, TimmNet):
    """A timm model as its pretrained configuration says it was trained: its ``mean`` /
    ``std``, fed at its ``input_size`` (or ``input_size`` px when given).  It is always built
    at the weights' size, so that they fit; a model of a fixed input size (a ViT: position
    embeddings per patch) is built with ``dynamic_img_size`` where timm offers it, so that it
    can be fed at another size (its position embeddings interpolated), e.g. a distillation
    teacher at ``teacher_size``; one timm cannot resize takes only its own size."""

    def __init__(self, name: str, input_size: int = 0, **kwargs):
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        if cfg is None:
            raise SelfSupError(f"timm:{name} has no pretrained configuration (input size, normalisation); use a "
                               "model that timm ships ImageNet weights for")
        own = int(cfg.input_size[-1])
        try:
            super().__init__(name, 3, own, **({"dynamic_img_size": True} if cfg.fixed_input_size else {}), **kwargs)
        except TypeError:  # a fixed-size model without dynamic_img_size
            if not cfg.fixed_input_size:
                raise
            super().__init__(name, 3, own, **kwargs)
        self.feed_as_trained(input_size or own, cfg.mean, cfg.std)


class ImageNetTorchvisionNet(ResizedInput, TorchvisionNet):
    """A torchvision model as its default ImageNet weights were trained: the crop size and
    ``mean`` / ``std`` of the weights' transforms (or ``input_size`` px when given); always
    the ImageNet stem, whatever the size."""

    def __init__(self, arch: str, input_size: int = 0):
        import torchvision

        t = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
        crop = int(t.crop_size[0])
        super().__init__(arch, 3, max(crop, 65))  # above 64 px: the ImageNet stem the weights were trained with
        self.feed_as_trained(input_size or crop, t.mean, t.std)


def _replace_stem(model: nn.Module, arch: str, in_chans: int) -> str:
    """Give ``model``'s first convolution that takes 3 channels ``in_chans`` instead; returns
    the line of Python that does the same to ``m`` (for the export's recipe)."""
    path = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3), None)
    if path is None:
        raise SelfSupError(f"torchvision:{arch} has no 3-channel convolution to give {in_chans} channels; use "
                           "a ResNet, timm:NAME or a selfsup backbone")
    old = model.get_submodule(path)
    args = dict(stride=old.stride, padding=old.padding, dilation=old.dilation, groups=old.groups,
                bias=old.bias is not None)
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent), child, nn.Conv2d(in_chans, old.out_channels, old.kernel_size, **args))
    where = "m" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in path.split("."))
    options = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return f"{where} = torch.nn.Conv2d({in_chans}, {old.out_channels}, {old.kernel_size!r}, {options})"


def library_backbone(name: str) -> Callable[..., nn.Module] | None:
    """The builder of ``torchvision:ARCH`` or ``timm:NAME``, None for other names; an
    unknown model is a one-line error.  ``input_size`` (px; 0 = the weights' own) builds
    the ImageNet model fed as trained (:class:`ResizedInput`) instead of the model fitted
    to the data's channels and size."""
    prefix, _, model = name.partition(":")
    if prefix == "torchvision" and model:
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if model not in known:
            raise SelfSupError(f"torchvision has no classification model {model!r}; e.g. "
                               f"{', '.join(k for k in known if k.startswith('res'))}")
        def build_torchvision(*, in_chans: int, image_size: int, input_size: int | None = None) -> nn.Module:
            if input_size is None:
                return TorchvisionNet(model, in_chans, image_size)
            _rgb_only(name, in_chans)
            return ImageNetTorchvisionNet(model, input_size)
        return build_torchvision
    if prefix == "timm" and model:
        import timm

        if not timm.is_model(model):
            raise SelfSupError(f"timm has no model {model!r}; `timm.list_models('*{model[:4]}*')` lists similar ones")
        def build_timm(*, in_chans: int, image_size: int, input_size: int | None = None, **kw) -> nn.Module:
            if input_size is None:
                return TimmNet(model, in_chans, image_size, **kw)
            _rgb_only(name, in_chans)
            return ImageNetTimmNet(model, input_size, **kw)
        return build_timm
    return None


@BACKBONES.register("resnet18", help="torchvision ResNet-18, 512-d (CIFAR stem at <= 64 px)")
def resnet18(*, in_chans: int, image_size: int) -> nn.Module:
    return TorchvisionNet("resnet18", in_chans, image_size)


@BACKBONES.register("resnet50", help="torchvision ResNet-50, 2048-d (CIFAR stem at <= 64 px)")
def resnet50(*, in_chans: int, image_size: int) -> nn.Module:
    return TorchvisionNet("resnet50", in_chans, image_size)
