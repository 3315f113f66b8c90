"""Backbones: one registry, one contract.

Every backbone is an ``nn.Module`` that maps a batch -- images ``(N, C, H, W)``, or
token ids ``(N, L)`` for the text backbones of :mod:`selfsup.models.text` -- to a pooled
representation ``h`` of shape ``(N, num_features)``: the vector every evaluation
(kNN, linear probe, fine-tuning, embedding) uses.  Every encoder also has ``name``,
``kwargs`` (enough to rebuild it) and ``data_options()`` (what a data source needs to
give it its input).  Builders take ``in_chans`` and
``image_size`` so the same name works for 8 px digits, 32 px shapes and 224 px photos.
Vision transformers also offer ``forward_tokens(x) -> (N, 1 + L, D)`` (CLS first) and
``patch_size`` for methods and pictures that need patch tokens.

:class:`Encoder` wraps a backbone with the input normalisation, so an exported encoder
takes plain ``[0, 1]`` images and needs nothing else to be used.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torchvision

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
        """What a data source needs to give this encoder its input: its image size."""
        return {"image_size": self.kwargs.get("image_size")}

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self.net, "forward_tokens"):
            raise TypeError(f"backbone {self.name!r} has no patch tokens (use a ViT backbone)")
        return self.net.forward_tokens(self.normalize(x))


def modality(name: str) -> str:
    """What backbone ``name`` takes: "image" (the default) or "text"."""
    return BACKBONES.meta(name).get("modality", "image")


def create_backbone(name: str, *, in_chans: int = 3, image_size: int = 32,
                    mean: list[float] | None = None, std: list[float] | None = None,
                    **kwargs) -> nn.Module:
    """Build the registered backbone ``name``: an image backbone wrapped in an
    :class:`Encoder` with the normalisation ``mean``/``std``; a text backbone (see
    :mod:`selfsup.models.text`) takes ``tokenizer``, ``max_length`` and its shape in
    ``kwargs`` and is its own encoder."""
    builder: Callable[..., nn.Module] = BACKBONES.get(name)
    if modality(name) == "text":
        return builder(**kwargs)
    net = builder(in_chans=in_chans, image_size=image_size, **kwargs)
    mean = list(mean) if mean is not None else [0.5] * in_chans
    std = list(std) if std is not None else [0.25] * in_chans
    spec = dict(in_chans=in_chans, image_size=image_size, mean=mean, std=std, **kwargs)
    return Encoder(net, mean, std, name=name, kwargs=spec)


def rebuild_encoder(spec: dict, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The encoder described by ``spec`` (``{"name", "kwargs"}`` as saved with a run or an
    export) in eval mode: with ``state`` loaded when given, freshly initialised (from the
    current torch seed) otherwise."""
    enc = create_backbone(spec["name"], **spec["kwargs"])
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


# --- torchvision ResNets --------------------------------------------------------------


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet without its classifier; CIFAR stem for small images.

    For inputs of at most 64 px the first conv becomes 3x3 stride 1 and the max-pool is
    removed (the CIFAR recipe of SimCLR/MoCo), otherwise the ImageNet stem is kept.
    Weights are randomly initialised: nothing is downloaded.
    """

    def __init__(self, arch: str, in_chans: int, image_size: int):
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None)
        if image_size <= 64:
            net.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.num_features = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, num_features)


@BACKBONES.register("resnet18", help="torchvision ResNet-18, 512-d (CIFAR stem at <= 64 px)")
def resnet18(*, in_chans: int, image_size: int) -> nn.Module:
    return TorchvisionResNet("resnet18", in_chans, image_size)


@BACKBONES.register("resnet50", help="torchvision ResNet-50, 2048-d (CIFAR stem at <= 64 px)")
def resnet50(*, in_chans: int, image_size: int) -> nn.Module:
    return TorchvisionResNet("resnet50", in_chans, image_size)
