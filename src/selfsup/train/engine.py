"""The training engine: the step loop and nothing else.

Per step: LR and weight decay from precomputed schedules, the method's loss under
autocast (bf16 on CUDA and on CPUs with native bf16, see :mod:`selfsup.models.runtime`),
a guard that stops on a non-finite loss *before* anything is written,
optional gradient clipping, the method's pre-step hook (gradient edits), the optimizer
step and the method's post-step hook (EMA).
Checkpoints are atomic and hold everything needed to continue the same run exactly:
model and method state (targets, queues, centres), optimizer, AMP scaler, step, and the
RNG states and the loader's position; the data order is a pure function of (seed, epoch)
(:mod:`selfsup.data.loader`), so the step number says where to continue.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from selfsup import distributed
from selfsup.config import RunConfig
from selfsup.data import SampleSet, to_input
from selfsup.data.loader import Loader
from selfsup.data.python import as_samples
from selfsup.errors import SelfSupError
from selfsup.methods.base import Method
from selfsup.models.runtime import choose_precision, fast_layout, keep_freed_memory, select_device
from selfsup.schedules import cosine_schedule, lr_schedule
from selfsup.train.checkpoint import CHECKPOINT, FORMAT, RESUME_KEYS, atomic_save, load_checkpoint, require_keys
from selfsup.train.monitor import CollapseMonitor
from selfsup.train.optim import build_optimizer, scaled_lr
from selfsup.train.safety import LOCK, RunLock, StopAtStepBoundary, first_nonfinite


def train(method: Method, data: SampleSet, cfg: RunConfig, run_dir: str | Path, *,
          resume: bool | dict[str, Any] = False, log: Callable[[str], None] = print,
          on_start: Callable[[], None] | None = None, monitor: Any = None) -> list[dict[str, float]]:
    """Pretrain ``method`` on the samples of ``data`` (an ImageSet or a TextSet, or a
    (N, H, W, C) uint8 array); returns the logged metrics.

    ``resume``: True continues from the run folder's last checkpoint; a checkpoint dict
    already read with :func:`load_checkpoint` is used as is.  The folder is locked for
    the whole call (:class:`~selfsup.train.safety.RunLock`); ``on_start`` is called once
    every check has passed, just before the first step (the API writes the run's
    config there, so a run that fails to start leaves the folder as it was).
    ``monitor`` (e.g. :class:`selfsup.eval.monitor.OnlineMonitor`) is asked every
    ``train.monitor_every`` epochs, and at the end, ``measure(encoder, epoch) -> (metrics,
    message)``; its metrics join that step's record, its message is printed."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with RunLock(run_dir) if distributed.from_env().is_main else contextlib.nullcontext():  # rank 0 writes
            return _train(method, data, cfg, run_dir, resume, log, on_start, monitor)
    except BaseException:
        if created and [p.name for p in run_dir.iterdir()] in ([], [LOCK]):  # a run that never started
            (run_dir / LOCK).unlink(missing_ok=True)
            run_dir.rmdir()
        raise


def _train(method, data, cfg: RunConfig, run_dir: Path, resume, log, on_start, monitor) -> list[dict[str, float]]:
    tc, oc = cfg.train, cfg.optim
    device = select_device(tc.device)
    world = distributed.setup(device)
    log = distributed.rank_log(log, world)
    if device.type == "cpu":
        keep_freed_memory()  # activations reuse the heap instead of fresh pages every step
    if tc.threads:
        torch.set_num_threads(tc.threads)

    samples = as_samples(data)
    n, bs = len(samples), tc.batch_size
    if bs < method.min_batch_size:
        raise SelfSupError(f"batch size {bs} is too small for {cfg.method} (needs at least "
                           f"{method.min_batch_size}); raise --batch-size")
    if bs > n // world.world_size:
        raise SelfSupError(f"batch size {bs} is larger than the {n // world.world_size} training samples of each of "
                           f"{world.world_size} process(es); lower --batch-size to at most {n // world.world_size}")
    loader = Loader(samples, bs, seed=tc.seed, rank=world.rank, world_size=world.world_size,
                    pin_memory=device.type == "cuda")  # this rank's shard; drops the last partial batch
    global_bs = bs * world.world_size
    steps_per_epoch = loader.steps_per_epoch
    total = tc.epochs * steps_per_epoch
    if total < 1:
        raise SelfSupError("nothing to train: --epochs must be at least 1")

    lr = scaled_lr(oc, global_bs)  # the LR rule is applied to the global batch
    lr_sched = lr_schedule(oc.schedule, lr, oc.min_lr, total, round(oc.warmup_epochs * steps_per_epoch))
    wd_end = oc.weight_decay if oc.weight_decay_end is None else oc.weight_decay_end
    wd_sched = cosine_schedule(oc.weight_decay, wd_end, total)
    method.setup_schedules(total, steps_per_epoch)
    if tc.sync_bn:
        if device.type != "cuda":
            raise SelfSupError("train.sync_bn needs CUDA: torch's SyncBatchNorm does not run on the CPU (MoCo's "
                               "shuffle-BN across processes needs none); drop train.sync_bn")
        if world.distributed:
            method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)  # same parameter names
    fast_layout(method.to(device), device)
    if tc.compile:
        if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
            raise SelfSupError("train.compile on the CPU needs a C++ compiler (g++ or clang++); install one "
                               "or drop train.compile")
        method.encoder.compile()  # in place: parameter names and checkpoints are unchanged
    optimizer = build_optimizer(method.trainable_parameters(), oc, method.lr_scales())
    precision = choose_precision(device, tc.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.needs_loss_scaling)

    torch.manual_seed(tc.seed)
    aug_gen = torch.Generator().manual_seed(tc.seed)
    step = 0
    ckpt_path = run_dir / CHECKPOINT
    metrics_path = run_dir / "metrics.jsonl"
    if resume:
        ckpt = require_keys(resume if isinstance(resume, dict) else load_checkpoint(ckpt_path), RESUME_KEYS, ckpt_path)
        saved = ckpt["config"]
        for key in ("method", "backbone"):
            if saved[key] != getattr(cfg, key):
                raise SelfSupError(f"cannot resume: the run in {run_dir} used {key} {saved[key]!r}, "
                                   f"not {getattr(cfg, key)!r}")
        try:
            method.load_state_dict(ckpt["method_state"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise SelfSupError(f"cannot resume from {ckpt_path}: its state does not fit this {cfg.method} "
                               f"({str(err).strip().splitlines()[0][:160]})") from None
        scaler.load_state_dict(ckpt["scaler"])
        aug_gen.set_state(ckpt["aug_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"])
        step = int(ckpt["step"])
        saved_world = ckpt.get("data_position", {}).get("world_size", 1)
        if saved_world != world.world_size:
            raise SelfSupError(f"cannot resume: the run in {run_dir} trained with {saved_world} process(es), this job "
                               f"has {world.world_size}; each process's shard and the steps per epoch depend on it, "
                               f"so resume with --nproc_per_node giving {saved_world} processes in all")
        saved_n = ckpt.get("data_position", {}).get("samples", n)
        if saved_n != n:
            raise SelfSupError(f"cannot resume: the run in {run_dir} was trained on {saved_n} samples, "
                               f"this data has {n}; resume with the same data")
        if not distributed.same_on_all_ranks(step, device):  # each rank reads the checkpoint itself
            raise SelfSupError(f"cannot resume: the processes read different checkpoints from {run_dir} (another "
                               "job wrote there while this one started); stop every job training into it, then resume")
        log(f"resuming {run_dir} at step {step}/{total}")
        if ckpt.get("precision", precision.name) != precision.name:
            log(f"note: the run so far trained in {ckpt['precision']}, it continues in {precision.name} "
                f"(set train.amp to keep one precision)")

    def last_good() -> str:
        if ckpt_path.exists():
            return f"the last good checkpoint {ckpt_path} is intact"
        return "no checkpoint was written"

    def save_checkpoint() -> None:
        bad = first_nonfinite(method)
        if distributed.any_rank(bad is not None, device):
            raise SelfSupError(f"{bad or 'a tensor on another rank'} became non-finite by step {step}; stopped "
                               f"before writing, {last_good()}; lower optim.base_lr or set optim.clip_grad")
        if not world.is_main:
            return
        atomic_save({
            "format": FORMAT, "config": cfg.to_dict(), "step": step,
            "method_state": method.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "aug_rng": aug_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "data_position": _position(loader, step, n),
            "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
            "encoder": {"name": method.encoder.name, "kwargs": method.encoder.kwargs},
            "precision": precision.name,
        }, ckpt_path)

    n_params = sum(p.numel() for _, p in method.trainable_parameters())
    log(f"{cfg.method} on {device} | {n_params / 1e6:.2f}M trainable params | precision {precision}"
        + ("" if precision.dtype is None else "; train.amp=false for fp32"))
    processes = f" ({world.world_size} processes x {bs})" if world.distributed else ""
    log(f"base lr {oc.base_lr:g} ({oc.lr_scaling} scaling) x global batch {global_bs}{processes} -> lr {lr:.4g}; "
        f"{steps_per_epoch} steps/epoch, {total} steps")

    stop_at = total if tc.max_steps is None else min(total, tc.max_steps)
    if step >= stop_at:
        log(f"the run in {run_dir} is already at step {step} of {stop_at}: nothing to train "
            f"(raise --epochs to extend it)")
        return []
    board = _tensorboard(run_dir) if tc.tensorboard and world.is_main else None  # checked first: it may be missing
    if world.is_main:
        if resume:
            _truncate_metrics(metrics_path, step)
        elif metrics_path.exists():
            metrics_path.unlink()
        if on_start is not None:
            on_start()
    step_fn = distributed.training_step(method, device)  # DDP under several processes
    history: list[dict[str, float]] = []
    collapse = CollapseMonitor()
    bar = _progress(total, step, tc.progress and world.is_main)
    t_last = t_step_end = time.perf_counter()
    seen, waited = 0, 0.0
    method.train()
    try:
        stop = StopAtStepBoundary()
        with stop:
            for _, batch in loader.steps(step, stop_at):
                waited += time.perf_counter() - t_step_end  # the step waited this long for its batch
                epoch = step // steps_per_epoch
                x = to_input(batch, device)  # images (B, C, H, W) in [0, 1], or token ids (B, L)
                for group in optimizer.param_groups:
                    group["lr"] = float(lr_sched[step]) * group.get("lr_scale", 1.0)
                    if group.get("apply_wd"):
                        group["weight_decay"] = float(wd_sched[step])
                with precision.autocast():
                    loss, logs = step_fn(x, aug_gen)
                value = loss.item()
                if distributed.any_rank(not math.isfinite(value), device):
                    raise SelfSupError(
                        f"loss became {value} at step {step} (epoch {epoch}); stopped before writing, "
                        f"{last_good()}; lower optim.base_lr or set optim.clip_grad")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # true gradients for clipping and the hook (no-op without AMP)
                if oc.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_([p for _, p in method.trainable_parameters()], oc.clip_grad)
                method.before_optimizer_step()
                scaler.step(optimizer)
                scaler.update()
                method.after_optimizer_step(step)
                step += 1
                seen += global_bs
                bar.update(1)
                checked = {}
                if monitor is not None and (step == stop_at or (
                        tc.monitor_every and step % (tc.monitor_every * steps_per_epoch) == 0)):
                    t_check = time.perf_counter()
                    checked, message = monitor.measure(method.encoder, step / steps_per_epoch)
                    checked["monitor_s"] = time.perf_counter() - t_check
                    t_last += checked["monitor_s"]  # the check is not training time
                    if message:
                        log(f"epoch {step / steps_per_epoch:g}: {message}")
                if step % tc.log_every == 0 or step == stop_at or checked:
                    now = time.perf_counter()
                    rec = {"step": step, "epoch": step / steps_per_epoch, "loss": value,
                           "lr": float(lr_sched[step - 1]), "samples_per_s": seen / (now - t_last),
                           "data_wait": waited / (now - t_last), **logs, **checked}
                    t_last, seen, waited = now, 0, 0.0
                    warning = collapse.update(logs)
                    if warning and collapse.bad == collapse.window:
                        log(f"warning at step {step}: {warning}")
                    rec["collapse_suspected"] = bool(warning)
                    history.append(rec)
                    if world.is_main:
                        with metrics_path.open("a") as f:
                            f.write(json.dumps(rec) + "\n")
                    if board is not None:
                        for key, v in rec.items():
                            if key != "step" and isinstance(v, (int, float)):
                                board.add_scalar(key, float(v), step)
                    knn = next((r["knn_monitor"] for r in reversed(history) if "knn_monitor" in r), None)
                    bar.set_postfix(loss=f"{value:.4f}", per_s=f"{rec['samples_per_s']:.0f}",
                                    **({} if knn is None else {"knn": f"{knn:.3f}"}))
                if (tc.checkpoint_every and step % tc.checkpoint_every == 0) or step % steps_per_epoch == 0:
                    save_checkpoint()
                if distributed.any_rank(stop.requested is not None, device):  # SIGINT / SIGTERM: leave between steps
                    save_checkpoint()
                    raise SelfSupError(f"stopped by {stop.requested or 'a signal'} after step {step}; checkpoint saved, continue "
                                       f"with --resume --out {run_dir}")
                t_step_end = time.perf_counter()
        save_checkpoint()
    finally:  # also on a stop or an error: the bar ends its line, TensorBoard flushes
        bar.close()
        if board is not None:
            board.close()

    final = next((r for r in reversed(history) if "eff_rank" in r), None)
    if final is not None:
        knn = (f"online kNN {final['knn_monitor']:.3f} (random init {final['knn_random_init']:.3f}), "
               if "knn_monitor" in final else "")
        log(f"{knn}effective rank {final['eff_rank']:.1f} (random init {final['eff_rank_random_init']:.1f}) "
            f"on {final['monitor_samples']} training samples")
    method.eval()
    return history


def _tensorboard(run_dir: Path):
    """A TensorBoard writer for ``RUN/tensorboard`` (the same records as metrics.jsonl)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SelfSupError("train.tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _position(loader: Loader, step: int, n: int) -> dict[str, int]:
    epoch, batch = loader.position(step)
    return {"epoch": epoch, "batch": batch, "world_size": loader.world_size, "samples": n}


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint a run resumes from."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)
