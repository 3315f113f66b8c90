"""The training engine: the step loop and nothing else.

``train`` reads as the run does: lock the folder, build the :class:`Trainer` (device,
loader, schedules, optimizer), ``restore`` a checkpoint when resuming, then per batch
``step`` (LR and weight decay from precomputed schedules, the method's loss under
autocast, the non-finite guard *before* anything is written, optional gradient clipping,
the method's pre-step hook, the optimizer step and the method's post-step hook for EMA
updates), ``check`` (the online monitor), ``record`` (metrics.jsonl, TensorBoard, the
progress bar) and ``save`` at epoch ends.  Autocast is bf16 on CUDA and on CPUs with
native bf16 (:mod:`selfsup.models.runtime`).

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
from selfsup.files import WriteError, append_text, atomic_write_text
from selfsup.methods.base import Method
from selfsup.models.runtime import choose_precision, fast_layout, keep_freed_memory, select_device
from selfsup.schedules import cosine_schedule, lr_schedule
from selfsup.train.checkpoint import CHECKPOINT, FORMAT, RESUME_KEYS, atomic_save, load_checkpoint, require_keys
from selfsup.train.monitor import CollapseMonitor
from selfsup.train.optim import build_optimizer, scaled_lr
from selfsup.train.safety import RunLock, StopAtStepBoundary, first_nonfinite, hold_run_folder


def train(method: Method, data: SampleSet, cfg: RunConfig, run_dir: str | Path, *,
          resume: bool | dict[str, Any] = False, log: Callable[[str], None] = print,
          on_start: Callable[[], None] | None = None, monitor: Any = None,
          lock: RunLock | None = None) -> list[dict[str, float]]:
    """Pretrain ``method`` on the samples of ``data`` (an ImageSet or a TextSet, or a
    (N, H, W, C) uint8 array); returns the logged metrics.

    ``resume``: True continues from the run folder's last checkpoint; a checkpoint dict
    already read with :func:`load_checkpoint` is used as is.  The folder is locked for
    the whole call (:func:`~selfsup.train.safety.hold_run_folder`), unless the caller
    passes the ``lock`` it already holds (the API locks before it decides whether the
    folder holds a run).  ``on_start`` is called once every check has passed, just
    before the first step (the API writes the run's config there, so a run that fails
    to start leaves the folder as it was).
    ``monitor`` (e.g. :class:`selfsup.eval.monitor.OnlineMonitor`) is asked every
    ``train.monitor_every`` epochs, and at the end, ``measure(encoder, epoch) -> (metrics,
    message)``; its metrics join that step's record, its message is printed."""
    run_dir = Path(run_dir)
    if lock is not None and lock.path.parent.resolve() != run_dir.resolve():
        raise ValueError(f"train() was given the lock of {lock.path.parent}, not of {run_dir}")
    own = lock is None and distributed.from_env().is_main  # rank 0 writes
    if not own:
        run_dir.mkdir(parents=True, exist_ok=True)
    with hold_run_folder(run_dir) if own else contextlib.nullcontext():
        return _train(method, data, cfg, run_dir, resume, log, on_start, monitor)


def _train(method, data, cfg: RunConfig, run_dir: Path, resume, log, on_start, monitor) -> list[dict[str, float]]:
    run = Trainer(method, data, cfg, run_dir, log)
    if resume:
        run.restore(resume if isinstance(resume, dict) else load_checkpoint(run.ckpt_path))
    run.announce()
    if run.step >= run.stop_at:
        run.log(f"the run in {run_dir} is already at step {run.step} of {run.stop_at}: nothing to train "
                f"(raise --epochs to extend it)")
        return []
    run.prepare()
    run.open_logs(resumed=bool(resume), on_start=on_start)
    run.method.train()
    stop = StopAtStepBoundary()
    try:
        with stop:
            for batch in run.batches():
                value, logs = run.step_on(batch)
                checked = run.check(monitor)
                if run.step % cfg.train.log_every == 0 or run.step == run.stop_at or checked:
                    run.record(value, logs, checked)
                if run.checkpoint_due():
                    run.save()
                if distributed.any_rank(stop.requested is not None, run.device):  # SIGINT / SIGTERM: leave between steps
                    run.save()
                    raise SelfSupError(f"stopped by {stop.requested or 'a signal'} after step {run.step}; checkpoint "
                                       f"saved, continue with --resume --out {run_dir}")
        if run.saved_step != run.step:  # a run that ends at an epoch boundary has just saved
            run.save()
    finally:  # also on a stop or an error: the bar ends its line, TensorBoard flushes
        run.close()
    run.summarize()
    run.method.eval()
    return run.history


class Trainer:
    """The state one run's steps share, and the named steps of :func:`_train`.

    Built once per call: device and process group, this rank's :class:`Loader`, the
    per-step LR and weight-decay schedules, the optimizer, the AMP scaler and the
    augmentation generator (seeded by ``train.seed``, replaced by the checkpoint's on
    resume)."""

    def __init__(self, method: Method, data, cfg: RunConfig, run_dir: Path, log: Callable[[str], None]):
        tc, oc = cfg.train, cfg.optim
        self.cfg, self.run_dir = cfg, run_dir
        self.device = select_device(tc.device)
        self.world = distributed.setup(self.device)
        self.log = distributed.rank_log(log, self.world)
        if self.device.type == "cpu":
            keep_freed_memory()  # activations reuse the heap instead of fresh pages every step
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.samples = as_samples(data)
        self.loader = _loader(method, self.samples, cfg, self.world, self.device)
        self.n, self.steps_per_epoch = self.loader.n, self.loader.steps_per_epoch
        self.global_bs = tc.batch_size * self.world.world_size
        self.total = tc.epochs * self.steps_per_epoch
        if self.total < 1:
            raise SelfSupError("nothing to train: --epochs must be at least 1")
        self.stop_at = self.total if tc.max_steps is None else min(self.total, tc.max_steps)

        self.lr = scaled_lr(oc, self.global_bs)  # the LR rule is applied to the global batch
        self.lr_sched = lr_schedule(oc.schedule, self.lr, oc.min_lr, self.total,
                                    round(oc.warmup_epochs * self.steps_per_epoch))
        self.wd_sched = cosine_schedule(oc.weight_decay, oc.weight_decay if oc.weight_decay_end is None
                                        else oc.weight_decay_end, self.total)
        method.setup_schedules(self.total, self.steps_per_epoch)
        self.method = _place(method, cfg, self.device, self.world)
        self.optimizer = build_optimizer(self.method.trainable_parameters(), oc, self.method.lr_scales())
        self.precision = choose_precision(self.device, tc.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.needs_loss_scaling)
        torch.manual_seed(tc.seed)
        self.aug_gen = torch.Generator().manual_seed(tc.seed)
        self.step = 0
        self.saved_step: int | None = None  # the step of the last checkpoint this call wrote
        self.ckpt_path = run_dir / CHECKPOINT
        self.metrics_path = run_dir / "metrics.jsonl"
        self.history: list[dict[str, float]] = []
        self.board = self.bar = None
        self.step_fn = self.collapse = None
        self.t_last = time.perf_counter()
        self.seen, self.waited = 0, 0.0

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint: method, optimizer, scaler, RNGs and step, after
        checking that it belongs to this method, backbone, world size and data."""
        cfg, run_dir, path = self.cfg, self.run_dir, self.ckpt_path
        ckpt = require_keys(ckpt, RESUME_KEYS, path)
        saved = ckpt["config"]
        for key in ("method", "backbone"):
            if saved[key] != getattr(cfg, key):
                raise SelfSupError(f"cannot resume: the run in {run_dir} used {key} {saved[key]!r}, "
                                   f"not {getattr(cfg, key)!r}")
        try:
            self.method.load_state_dict(ckpt["method_state"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise SelfSupError(f"cannot resume from {path}: its state does not fit this {cfg.method} "
                               f"({str(err).strip().splitlines()[0][:160]})") from None
        self.scaler.load_state_dict(ckpt["scaler"])
        self.aug_gen.set_state(ckpt["aug_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        if self.device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"])
        self.step = int(ckpt["step"])
        position = ckpt.get("data_position", {})
        world_size = self.world.world_size
        if position.get("world_size", 1) != world_size:
            raise SelfSupError(f"cannot resume: the run in {run_dir} trained with {position.get('world_size', 1)} "
                               f"process(es), this job has {world_size}; each process's shard and the steps per "
                               f"epoch depend on it, so resume with --nproc_per_node giving "
                               f"{position.get('world_size', 1)} processes in all")
        if position.get("samples", self.n) != self.n:
            raise SelfSupError(f"cannot resume: the run in {run_dir} was trained on {position['samples']} samples, "
                               f"this data has {self.n}; resume with the same data")
        if not distributed.same_on_all_ranks(self.step, self.device):  # each rank reads the checkpoint itself
            raise SelfSupError(f"cannot resume: the processes read different checkpoints from {run_dir} (another "
                               "job wrote there while this one started); stop every job training into it, then resume")
        self.log(f"resuming {run_dir} at step {self.step}/{self.total}")
        if ckpt.get("precision", self.precision.name) != self.precision.name:
            self.log(f"note: the run so far trained in {ckpt['precision']}, it continues in {self.precision.name} "
                     f"(set train.amp to keep one precision)")

    def announce(self) -> None:
        """Print the device, size, precision and the LR arithmetic (base, batch, actual)."""
        oc, precision, world = self.cfg.optim, self.precision, self.world
        n_params = sum(p.numel() for _, p in self.method.trainable_parameters())
        self.log(f"{self.cfg.method} on {self.device} | {n_params / 1e6:.2f}M trainable params | precision "
                 f"{precision}" + ("" if precision.dtype is None else "; train.amp=false for fp32"))
        processes = f" ({world.world_size} processes x {self.cfg.train.batch_size})" if world.distributed else ""
        self.log(f"base lr {oc.base_lr:g} ({oc.lr_scaling} scaling) x global batch {self.global_bs}{processes} -> lr "
                 f"{self.lr:.4g}; {self.steps_per_epoch} steps/epoch, {self.total} steps")

    def prepare(self) -> None:
        """The method's pass over the training samples before the first step (distill's teacher
        cache), without gradients and in the run's precision; every rank, and every resume,
        computes it again (it is not in the checkpoint)."""
        with torch.no_grad(), self.precision.autocast():
            self.method.prepare(self.samples, self.device, progress=self.cfg.train.progress and self.world.is_main)

    def open_logs(self, *, resumed: bool, on_start: Callable[[], None] | None) -> None:
        """TensorBoard (checked first: it may be missing), metrics.jsonl cut back to the
        checkpoint's step (or started afresh), the caller's ``on_start``, the progress bar."""
        tc, main = self.cfg.train, self.world.is_main
        self.board = _tensorboard(self.run_dir) if tc.tensorboard and main else None
        if main:
            try:
                if resumed:
                    _truncate_metrics(self.metrics_path, self.step)
                elif self.metrics_path.exists():
                    self.metrics_path.unlink()
                if on_start is not None:
                    on_start()
            except WriteError as err:
                raise self._write_failed(err) from None
        self.step_fn = distributed.training_step(self.method, self.device)  # DDP under several processes
        self.collapse = CollapseMonitor()
        self.bar = _progress(self.total, self.step, tc.progress and main)
        self.t_last = time.perf_counter()

    def batches(self):
        """This rank's batches ``(indices, images)`` from the current step to ``stop_at``, adding
        the time each was waited for to ``waited`` (the data-wait share of the records)."""
        steps = self.loader.steps(self.step, self.stop_at)
        while True:
            t_wait = time.perf_counter()
            try:
                batch = next(steps)
            except StopIteration:
                return
            self.waited += time.perf_counter() - t_wait
            yield batch

    def step_on(self, batch) -> tuple[float, dict[str, float]]:
        """One optimizer step on ``batch`` = (indices, samples); returns the loss and the method's logs."""
        oc, optimizer, step = self.cfg.optim, self.optimizer, self.step
        indices, batch = batch
        x = to_input(batch, self.device)  # images (B, C, H, W) in [0, 1], or token ids (B, L)
        # global sample indices, for a method that keeps per-sample state (distill's teacher cache)
        kw = {"index": torch.from_numpy(indices).to(self.device)} if self.method.wants_index else {}
        for group in optimizer.param_groups:
            group["lr"] = float(self.lr_sched[step]) * group.get("lr_scale", 1.0)
            if group.get("apply_wd"):
                group["weight_decay"] = float(self.wd_sched[step])
        with self.precision.autocast():
            loss, logs = self.step_fn(x, self.aug_gen, **kw)
        value = loss.item()
        if distributed.any_rank(not math.isfinite(value), self.device):
            raise SelfSupError(f"loss became {value} at step {step} (epoch {step // self.steps_per_epoch}); "
                               f"stopped before writing, {self._last_good()}; lower optim.base_lr or set "
                               f"optim.clip_grad")
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)  # true gradients for clipping and the hook (no-op without AMP)
        if oc.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_([p for _, p in self.method.trainable_parameters()], oc.clip_grad)
        self.method.before_optimizer_step()
        self.scaler.step(optimizer)
        self.scaler.update()
        self.method.after_optimizer_step(step)
        self.step += 1
        self.seen += self.global_bs
        self.bar.update(1)
        return value, logs

    def check(self, monitor: Any) -> dict[str, float]:
        """The online monitor's metrics when a check is due (every ``train.monitor_every``
        epochs and at the last step), else ``{}``; its time is not counted as training."""
        every = self.cfg.train.monitor_every
        if monitor is None or not (self.step == self.stop_at or (
                every and self.step % (every * self.steps_per_epoch) == 0)):
            return {}
        t_check = time.perf_counter()
        checked, message = monitor.measure(self.method.encoder, self.step / self.steps_per_epoch)
        checked["monitor_s"] = time.perf_counter() - t_check
        self.t_last += checked["monitor_s"]
        if message:
            self.log(f"epoch {self.step / self.steps_per_epoch:g}: {message}")
        return checked

    def record(self, value: float, logs: dict[str, float], checked: dict[str, float]) -> None:
        """One metrics record: metrics.jsonl (rank 0), TensorBoard, the progress bar, and
        a warning when the collapse monitor has seen its whole window go bad."""
        now, step = time.perf_counter(), self.step
        rec = {"step": step, "epoch": step / self.steps_per_epoch, "loss": value,
               "lr": float(self.lr_sched[step - 1]), "samples_per_s": self.seen / (now - self.t_last),
               "data_wait": self.waited / (now - self.t_last), **logs, **checked}
        self.t_last, self.seen, self.waited = now, 0, 0.0
        warning = self.collapse.update(logs)
        if warning and self.collapse.bad == self.collapse.window:
            self.log(f"warning at step {step}: {warning}")
        rec["collapse_suspected"] = bool(warning)
        self.history.append(rec)
        if self.world.is_main:
            try:
                append_text(self.metrics_path, json.dumps(rec) + "\n")
            except WriteError as err:
                raise self._write_failed(err) from None
        if self.board is not None:
            for key, v in rec.items():
                if key != "step" and isinstance(v, (int, float)):
                    self.board.add_scalar(key, float(v), step)
        knn = next((r["knn_monitor"] for r in reversed(self.history) if "knn_monitor" in r), None)
        self.bar.set_postfix(loss=f"{value:.4f}", per_s=f"{rec['samples_per_s']:.0f}",
                             **({} if knn is None else {"knn": f"{knn:.3f}"}))

    def checkpoint_due(self) -> bool:
        every = self.cfg.train.checkpoint_every
        return bool(every and self.step % every == 0) or self.step % self.steps_per_epoch == 0

    def save(self) -> None:
        """Write the checkpoint atomically (rank 0), after checking on every rank that no
        parameter or buffer became non-finite."""
        bad = first_nonfinite(self.method)
        if distributed.any_rank(bad is not None, self.device):
            raise SelfSupError(f"{bad or 'a tensor on another rank'} became non-finite by step {self.step}; stopped "
                               f"before writing, {self._last_good()}; lower optim.base_lr or set optim.clip_grad")
        self.saved_step = self.step
        if not self.world.is_main:
            return
        try:
            self._write_checkpoint()
        except WriteError as err:  # the rename never happened: the last checkpoint is the one there was
            raise self._write_failed(err) from None

    def _write_checkpoint(self) -> None:
        atomic_save({
            "format": FORMAT, "config": self.cfg.to_dict(), "step": self.step,
            "method_state": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "aug_rng": self.aug_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "data_position": _position(self.loader, self.step, self.n),
            "cuda_rng": torch.cuda.get_rng_state() if self.device.type == "cuda" else None,
            "encoder": {"name": self.method.encoder.name, "kwargs": self.method.encoder.kwargs},
            "precision": self.precision.name,
        }, self.ckpt_path)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.board is not None:
            self.board.close()

    def summarize(self) -> None:
        """Print the last monitor check: online kNN and effective rank against random init."""
        final = next((r for r in reversed(self.history) if "eff_rank" in r), None)
        if final is None:
            return
        knn = (f"online kNN {final['knn_monitor']:.3f} (random init {final['knn_random_init']:.3f}), "
               if "knn_monitor" in final else "")
        self.log(f"{knn}effective rank {final['eff_rank']:.1f} (random init {final['eff_rank_random_init']:.1f}) "
                 f"on {final['monitor_samples']} training samples")

    def _write_failed(self, err: WriteError) -> WriteError:
        """``err`` and what the run can go on from: its last checkpoint, or a fresh start."""
        then = ("continue from it with --resume" if self.ckpt_path.exists() else
                "run the same command again to start over")
        return WriteError(f"{err}; {self._last_good()}; {then}")

    def _last_good(self) -> str:
        if self.ckpt_path.exists():
            return f"the last good checkpoint {self.ckpt_path} is intact"
        return "no checkpoint was written"


def _loader(method: Method, samples, cfg: RunConfig, world, device: torch.device) -> Loader:
    """This rank's shard in batches of ``train.batch_size`` (the last partial batch dropped),
    after checking the batch fits the method and the data."""
    n, bs, per_rank = len(samples), cfg.train.batch_size, len(samples) // world.world_size
    if bs < method.min_batch_size:
        raise SelfSupError(f"batch size {bs} is too small for {cfg.method} (needs at least "
                           f"{method.min_batch_size}); raise --batch-size")
    if bs > per_rank:
        raise SelfSupError(f"batch size {bs} is larger than the {per_rank} training samples of each of "
                           f"{world.world_size} process(es); lower --batch-size to at most {per_rank}")
    return Loader(samples, bs, seed=cfg.train.seed, rank=world.rank, world_size=world.world_size,
                  pin_memory=device.type == "cuda")


def _place(method: Method, cfg: RunConfig, device: torch.device, world) -> Method:
    """The method on its device: SyncBatchNorm under torchrun with train.sync_bn, channels-last
    where that is faster, and the encoder compiled with train.compile."""
    tc = cfg.train
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
    return method
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
    """Drop metric lines written after the checkpoint a run resumes from, and a torn last
    line (a process killed during an append); any other line that is not a record is a
    one-line error, not a traceback.  The file is rewritten atomically."""
    if not path.exists():
        return
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    keep = []
    for i, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), (int, float)):
                raise ValueError("a record has a step")
        except ValueError:
            if i == len(lines):
                break  # torn by a kill during the append
            raise SelfSupError(f"{path} line {i} is not a metrics record; repair or remove that line, then "
                               "resume") from None
        if record["step"] <= step:
            keep.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)
