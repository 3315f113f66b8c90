"""selfsup: self-supervised representation learning -- pretrain, measure, use.

The public API (imported lazily, so ``selfsup --help`` stays fast)::

    selfsup.pretrain(method, data, **options) -> Run
    selfsup.evaluate(encoder_or_path, data) -> dict
    selfsup.embed(encoder_or_path, data, out_dir) -> paths
    selfsup.label_efficiency(encoder_or_path, data) -> dict
    selfsup.inspect_encoder(encoder_or_path, data) -> dict
    selfsup.select(encoder_or_path, data, budget) -> Selection (which samples to label)
    selfsup.load_encoder(path) -> nn.Module
    selfsup.export_encoder(encoder, path)
    selfsup.report(run_dir) -> path of RUN/report.html

Example (pretrain, then measure the encoder it wrote)::

    run = selfsup.pretrain("simclr", "shapes", out_dir="runs/simclr")
    selfsup.evaluate("runs/simclr", "shapes")  # {"knn_top1": ..., "linear_top1": ..., ...}
"""
from __future__ import annotations

__version__ = "0.1.0"

_API = ("pretrain", "evaluate", "embed", "label_efficiency", "inspect_encoder", "select", "load_encoder",
        "export_encoder", "report", "build_config", "Run", "Selection")


def __getattr__(name: str):
    if name in _API:
        from selfsup import api

        return getattr(api, name)
    raise AttributeError(f"module 'selfsup' has no attribute {name!r}")


__all__ = list(_API)
