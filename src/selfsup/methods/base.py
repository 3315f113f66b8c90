"""The method contract shared by every self-supervised method.

A method is an ``nn.Module`` that owns the encoder, its heads, its view recipe and all
of its training state (EMA targets, queues, centres) as submodules and buffers, so one
``state_dict`` saves and restores everything on resume.  The engine calls, per step::

    loss, logs = method.training_step(x, generator)   # images (N, C, H, W) in [0, 1], or token ids (N, L)
    ... backward (and the optional global gradient clip) ...
    method.before_optimizer_step()                          # gradient edits (unscaled grads)
    ... optimizer step ...
    method.after_optimizer_step(step)                       # EMA updates and the like

``setup_schedules(total_steps, steps_per_epoch)`` is called once before training with the
run's length, for per-step schedules (EMA momentum, teacher temperature), and
``prepare(samples, device, progress=...)`` once before the first step (also on a resumed
run), under ``no_grad``, with the training samples (distill's teacher cache).  A method
that sets ``wants_index = True`` is also given ``index=``, a LongTensor (N,) of the batch's
sample indices into the training set, at each ``training_step``.

Why this split: the engine owns what every method shares (the optimizer, AMP, gradient
clipping, checkpoints, the step loop), and a method file stays one short module that reads
top to bottom -- heads, views, loss -- with its state where a checkpoint saves it.  A new
method subclasses :class:`Method`, registers itself with ``@METHODS.register(name)`` and
is then available to :func:`create_method`, the CLI and the API by that name.

Example::

    >>> import torch
    >>> from selfsup.methods import create_method
    >>> from selfsup.models import create_backbone
    >>> encoder = create_backbone("small_cnn", in_chans=3, image_size=16)
    >>> method = create_method("simclr", encoder, {"temperature": 0.2}, image_size=16, channels=3)
    >>> loss, logs = method.training_step(torch.rand(8, 3, 16, 16), torch.Generator().manual_seed(0))
    >>> loss.shape, sorted(logs)
    (torch.Size([]), ['pos_sim', 'z_std'])
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.config import coerce
from selfsup.errors import SelfSupError
from selfsup.models import Encoder
from selfsup.registry import Registry, no_option

METHODS = Registry("method")
COLLAPSE_STD = 0.1  # z_std below this: collapse suspected (the training monitor's threshold)


@torch.no_grad()
def normalized_std(z: torch.Tensor) -> float:
    """(N, D) -> scalar in [0, ~1]; 0 means every row points the same way.

    The per-dimension standard deviation of the L2-normalised rows, averaged over the
    dimensions and scaled by sqrt(D): about 1 when the rows spread evenly over the sphere
    (each coordinate of a random unit vector has std 1/sqrt(D)), 0 under complete collapse.
    SimSiam's collapse diagnostic (Chen & He 2020, arXiv 2011.10566, Sec. 4.1).
    """
    z = F.normalize(z.detach().float(), dim=1)
    return (z.std(dim=0).mean() * math.sqrt(z.shape[1])).item()


class Method(nn.Module):
    """Base class of every self-supervised method (see the module docstring for the calls
    the engine makes and in which order).

    ``encoder`` is the backbone whose output ``h`` downstream tasks use; heads, EMA targets,
    queues and centres are the subclass's submodules and buffers.  ``cfg`` is an instance
    of the subclass's ``Config`` dataclass; ``image_size`` and ``channels`` describe the
    images (None for text methods).
    """

    Config: ClassVar[type] = object          # the method's options dataclass
    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # name -> dotted RunConfig overrides
    min_batch_size: ClassVar[int] = 1        # smallest batch for which the loss is meaningful
    modalities: ClassVar[tuple[str, ...]] = ("image",)  # what it trains on: "image", "text" or both
    wants_index: bool = False                # True: training_step also takes index= (the samples' indices)

    def __init__(self, encoder: Encoder, cfg: Any, *, image_size: int, channels: int):
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg
        self.image_size = image_size
        self.channels = channels
        self.total_steps = 1
        self.steps_per_epoch = 1

    def setup_schedules(self, total_steps: int, steps_per_epoch: int) -> None:
        self.total_steps = max(total_steps, 1)
        self.steps_per_epoch = max(steps_per_epoch, 1)

    def prepare(self, samples: Any, device: torch.device, *, progress: bool = False) -> None:
        """Called once before the first step, under ``no_grad``, with the training samples
        (an ImageSet or a TextSet) and the run's device; state it computes here is not saved
        with checkpoints, so it must be recomputable (a resumed run calls it again).
        ``progress``: show a progress bar.  Default: nothing."""

    def training_step(self, x: torch.Tensor, generator: torch.Generator
                      ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def before_optimizer_step(self) -> None:
        """Called after backward and the optional global clip, before the optimizer step;
        gradients are unscaled (AMP) by then. For method-specific gradient edits (DINO's
        per-tensor clipping). Default: nothing."""

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """Called after each optimizer step (EMA updates). Default: nothing."""

    def lr_scales(self) -> dict[str, float]:
        """LR multipliers by parameter-name prefix (e.g. BYOL's faster predictor). Default: none."""
        return {}

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters the optimizer updates (EMA targets are excluded by requires_grad)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]


def create_method(name: str, encoder: Encoder, options: dict[str, Any] | None = None, *,
                  image_size: int | None = None, channels: int | None = None, **resources: Any) -> Method:
    """Build method ``name`` around ``encoder``; ``options`` fill the method's Config.
    Image methods need the images' ``image_size`` and ``channels``; text methods take
    what they need from the encoder's tokenizer.  ``resources`` are modules a method takes
    already built (distill's ``teacher=``), passed on to its constructor."""
    cls = METHODS.get(name)
    return cls(encoder, method_config(name, options), image_size=image_size, channels=channels, **resources)


def method_config(name: str, options: dict[str, Any] | None = None) -> Any:
    """Method ``name``'s typed Config filled from ``options`` (``method_cfg`` of a run).

    Checked against the dataclass before any data is read: an unknown key is a one-line
    error naming the closest option, and each value gets its default's type (a clear
    error if it cannot)."""
    cls = METHODS.get(name)
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    options = options or {}
    for key in sorted(set(options) - set(fields)):
        raise SelfSupError(no_option(f"method {name!r}", key, fields, "method_cfg."))
    defaults = cls.Config()
    return cls.Config(**{k: coerce(getattr(defaults, k), v, f"method_cfg.{k}", fields[k].type)
                         for k, v in options.items()})


def momentum_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """EMA of parameters only: ``t <- m t + (1 - m) o`` for every parameter pair.

    Buffers (BatchNorm running statistics) are not averaged: the target keeps its own, as
    in the authors' MoCo (He et al. 2019, arXiv 1911.05722) and BYOL (Grill et al. 2020,
    arXiv 2006.07733) code.  The target runs in training mode, on batch statistics, so its
    running statistics never enter the loss.  ``online`` and ``target`` must have the same
    architecture (the target is made as a deep copy of the online network)."""
    with torch.no_grad():
        for po, pt in zip(online.parameters(), target.parameters()):
            pt.mul_(momentum).add_(po.detach(), alpha=1 - momentum)
