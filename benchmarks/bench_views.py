"""Time selfsup.views.augment against per-image torchvision.transforms.v2.

Workload: one SimCLR view of a batch of 256 RGB images of 32x32 (blur kept on, sigma
scaled to 32 px in both).  Prints the hardware, torch version and the median over 20 runs.

    PYTHONPATH=src python benchmarks/bench_views.py
"""
import os
import platform
import statistics
import time

import torch
import torchvision
from torchvision.transforms import v2

from selfsup.data.views import BLUR_REFERENCE_SIDE, augment, blur_kernel_size, simclr_views

N, SIDE, RUNS = 256, 32, 20


def median_ms(fn) -> float:
    fn()  # warm-up
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    x = torch.rand(N, 3, SIDE, SIDE)
    cfg = simclr_views(size=SIDE)
    gen = torch.Generator().manual_seed(0)

    sigma = tuple(s * SIDE / BLUR_REFERENCE_SIDE for s in cfg.blur_sigma)
    blur = v2.GaussianBlur(blur_kernel_size(SIDE, cfg.blur_kernel_frac), sigma)
    b, c, s, h = cfg.jitter
    per_image = v2.Compose([
        v2.RandomResizedCrop(SIDE, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True),
        v2.RandomHorizontalFlip(cfg.flip_p),
        v2.RandomApply([v2.ColorJitter(b, c, s, h)], p=cfg.jitter_p),
        v2.RandomGrayscale(cfg.gray_p),
        v2.RandomApply([blur], p=cfg.blur_p),
    ])

    print(f"hardware: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(f"SimCLR view of {N} x 3x{SIDE}x{SIDE}, median of {RUNS} runs:")
    batched = median_ms(lambda: augment(x, cfg, gen))
    print(f"  selfsup.views.augment (batched):       {batched:8.2f} ms")
    print(f"  torchvision.transforms.v2 (per image): "
          f"{median_ms(lambda: torch.stack([per_image(img) for img in x])):8.2f} ms")


if __name__ == "__main__":
    main()
