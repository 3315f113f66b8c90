"""Optimizers: LR scaling, parameter groups, LARS; one registry each for the optimizers
(:data:`OPTIMIZERS`) and the LR scaling rules (:data:`LR_SCALINGS`).

The per-step schedules live in :mod:`selfsup.schedules`.  Weight decay is never applied to
biases or other 1-D parameters (norm weights); LARS also skips its trust ratio there.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from selfsup.config import OptimConfig
from selfsup.registry import Registry

OPTIMIZERS = Registry("optimizer")
LR_SCALINGS = Registry("optim.lr_scaling")

# base LR -> absolute LR for a (global) batch.  Linear scaling per 256 samples: Goyal et al.
# 2017, arXiv 1706.02677, used by MoCo, BYOL, MAE and DINO; the square-root rule is the one
# SimCLR (Chen et al. 2020, arXiv 2002.05709, appendix B.1) recommends for small batches.
LR_SCALINGS.register("linear", lambda base, batch: base * batch / 256, help="base_lr * batch / 256")
LR_SCALINGS.register("sqrt", lambda base, batch: base * math.sqrt(batch), help="base_lr * sqrt(batch)")
LR_SCALINGS.register("none", lambda base, batch: base, help="base_lr as it is")


def scaled_lr(cfg: OptimConfig, batch_size: int) -> float:
    """Absolute LR from the base LR and the effective (global) batch, by ``cfg.lr_scaling``."""
    return LR_SCALINGS.get(cfg.lr_scaling)(cfg.base_lr, batch_size)


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017).

    For each parameter tensor with ``ndim > 1``: ``g <- g + wd * w``, then the update is
    scaled by the trust ratio ``eta * ||w|| / ||g||`` (1 when either norm is 0).  1-D
    tensors (biases, norm weights) get neither decay nor adaptation, as in SimCLR/BYOL.
    """

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 eta: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if p.ndim > 1:
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.norm(p), torch.norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
                    g = g.mul(trust)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"].mul_(group["momentum"]).add_(g)
                p.add_(mu, alpha=-group["lr"])
        return loss


def param_groups(params: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two groups: decayed (ndim > 1) and not decayed (biases, norms, tokens of ndim 1)."""
    decay = [p for n, p in params if p.requires_grad and p.ndim > 1]
    no_decay = [p for n, p in params if p.requires_grad and p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": weight_decay, "apply_wd": True},
        {"params": no_decay, "weight_decay": 0.0, "apply_wd": False},
    ]


def build_optimizer(params: list[tuple[str, nn.Parameter]], cfg: OptimConfig,
                    lr_scales: dict[str, float] | None = None) -> torch.optim.Optimizer:
    """The optimizer over ``params``; ``lr_scales`` maps parameter-name prefixes to LR
    multipliers (``{"predictor.": 10.0}``), kept in each group's ``lr_scale``."""
    scale_of = lambda name: next((v for k, v in (lr_scales or {}).items() if name.startswith(k)), 1.0)  # noqa: E731
    groups = []
    for scale in dict.fromkeys(scale_of(n) for n, _ in params):
        groups += [dict(g, lr_scale=scale) for g in param_groups([(n, p) for n, p in params if scale_of(n) == scale],
                                                                 cfg.weight_decay)]
    groups = [g for g in groups if g["params"]]
    return OPTIMIZERS.get(cfg.name)(groups, cfg)


@OPTIMIZERS.register("adamw", help="AdamW (Loshchilov & Hutter 2019), decoupled weight decay; optim.betas, optim.eps")
def _adamw(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=0.0, betas=tuple(cfg.betas), eps=cfg.eps, **fused_option(groups))


@OPTIMIZERS.register("sgd", help="SGD with momentum (optim.momentum), L2 weight decay")
def _sgd(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=0.0, momentum=cfg.momentum, **fused_option(groups))


@OPTIMIZERS.register("lars", help="LARS (You et al. 2017): SGD with a layer-wise trust ratio, for large batches")
def _lars(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    return LARS(groups, lr=0.0, momentum=cfg.momentum)


def fused_option(groups: list[dict]) -> dict:
    """``{"fused": True}`` for torch's AdamW/SGD where it is supported -- one kernel per step
    instead of a Python loop over the parameters, the same update up to rounding: float parameters on
    one CUDA device, or on the CPU with torch >= 2.4; else ``{}``."""
    params = [p for g in groups for p in g["params"]]
    if not params or len({p.device for p in params}) != 1 or not all(p.is_floating_point() for p in params):
        return {}
    kind = params[0].device.type
    ok = kind == "cuda" or (kind == "cpu" and tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4))
    return {"fused": True} if ok else {}
