"""Distillation: a small student learns the embeddings of a frozen, already-trained teacher.

The teacher is a pretrained model (``pretrained:efficientnet_lite0``), a selfsup run
folder or an exported selfsup encoder, or for text a Hugging Face BERT folder
(``method_cfg.teacher``, ``--teacher`` on the command line); the student is any
backbone.  Each image gives two views; the teacher embeds each view at its own input size
and normalisation, and the student, through a head ``g`` (an MLP from the student's width
to the teacher's), predicts the teacher's embedding of the *same* view -- "consistent
teaching" (Beyer et al., "Knowledge distillation: A good teacher is patient and
consistent", CVPR 2022, arXiv 2106.05237): the student and the teacher see the same crop,
so the target is one the student can reach.  Downstream tasks use the student's ``h = f(x)``, never ``g(h)``.

Losses (``method_cfg.loss``):

* ``cosine``: ``mean(1 - cos(g(f(v)), t(v)))`` (:func:`losses.cosine_distill_loss`);
* ``seed``: SEED's relational loss (Fang et al., "SEED: Self-supervised Distillation For
  Visual Representation", ICLR 2021, arXiv 2101.04731; :func:`losses.seed_loss`): the
  student's softmax similarity over [the teacher's embedding of that view; a queue of K
  earlier teacher embeddings] matches the teacher's own.  The queue is training state
  (a buffer, saved with checkpoints), filled after the loss with every rank's teacher
  embeddings of the step (a ring buffer);
* ``both``: their sum, the SEED term weighted by ``seed_weight``.

The teacher never trains: it runs in eval mode (BatchNorm on its running statistics),
with ``requires_grad`` off, under ``no_grad``.  It is not a submodule: it is kept out of
``parameters()`` (so out of the optimizer and of DDP), out of ``state_dict()`` (so out of
checkpoints, which stay the student's size) and out of ``train()`` (so it stays in eval
mode), while ``.to(device)`` / ``.double()`` still move it (``_apply`` is forwarded).  A
checkpoint holds the teacher's spec (``method_cfg.teacher``) and a resumed run rebuilds
it from there.  A pretrained teacher the method loads itself
(:func:`selfsup.models.pretrained.load_pretrained`; ``timm:NAME`` / ``torchvision:ARCH``
with a local weight file: :func:`selfsup.models.imagenet.load_imagenet`); a run folder or
export is read by the layer above (:func:`selfsup.encoders.load_teacher`, which
:func:`selfsup.api.pretrain` calls) and passed in as ``teacher=``.

``cache`` (``method_cfg.cache``) trades some consistent teaching for speed: before the first
step the teacher embeds ``cache_views`` fixed views of every training image -- view 0 the
image itself, the others drawn once from ``views`` -- and each step shows the student one
of its image's cached views, picked at random, with the teacher's embedding of exactly that
view as the target, so a step never runs the teacher.  The teaching stays consistent (the
student sees the crop the teacher saw) but is no longer patient: a few fixed views per
image instead of a fresh one each step.  On a CPU, where the teacher is nearly all of a
step, that is what makes a short distillation possible at all; with small data, several
cached views and mixup (below) generalised better than one un-augmented view or the
student's own augmentation of it.  The views are held in memory as uint8 next to the
embeddings; neither is training state: they are not saved with checkpoints (which stay
small) and a resumed run recomputes them, identically (the teacher is frozen and the views
come from a fixed seed).  Under torchrun every rank computes the whole cache (the simplest:
no communication, and each rank's batches index it by global sample index).

``mixup`` (``method_cfg.mixup``, Zhang et al. 2018, arXiv 1710.09412) blends pairs of the
batch's inputs with weights from Beta(a, a).  Without a cache the teacher embeds the blend
itself -- Beyer et al.'s "function matching": the student learns the teacher's function on
and between the images; with a cache the target is the same blend of the two cached
embeddings (the teacher never sees the blend), a cheaper stand-in.

**Text.**  When the student is a text encoder (the ``bert`` backbone, any size, reading
selfsup's tokenizer) the teacher must be one too: a Hugging Face BERT-family folder such as
a sentence-transformers model, or a selfsup text run or export
(:func:`selfsup.encoders.load_teacher`).  The teacher's embedding of a text is its pooled
last hidden state -- for a Hugging Face folder the attention-masked mean, the mean pooling
of sentence-transformers (Reimers & Gurevych 2019, arXiv 1908.10084) -- of the text read
with the teacher's *own* tokenizer and length, while the student reads the same text with
its own.  The student's view of a text drops each of its words with probability
``drop_words`` (:func:`drop_words`; word deletion as in CLEAR, Wu et al. 2020, arXiv
2012.15466); with ``cache`` the teacher embeds each whole text once before the first step,
without it the teacher embeds the very view the student reads.  One view per text and step;
the raw texts come from ``prepare`` and each step's by ``index=`` (so the engine's token ids
only give the device).  ``mixup``, ``cache_views`` and ``teacher_size`` are image options.

``teacher_size`` is the side the teacher sees: by default the teacher's own (224 px for
EfficientNet-Lite0, the training size of a selfsup teacher); smaller is faster, as the
teacher is most of a step's time on a CPU.

Usage::

    selfsup.pretrain("distill", "shapes", overrides={"method_cfg.teacher": "pretrained:efficientnet_lite0"})
    # or: selfsup pretrain --method distill --teacher pretrained:efficientnet_lite0 --data shapes
    # text (the cpu-text preset is taken for text data):
    # selfsup pretrain --method distill --teacher /path/to/minilm_folder --data lang
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup import distributed
from selfsup.data import to_input
from selfsup.data.loader import Loader
from selfsup.data.views import augment, build_views, simclr_views
from selfsup.errors import SelfSupError
from selfsup.methods.base import METHODS, Method, normalized_std
from selfsup.methods.losses import cosine_distill_loss, seed_loss
from selfsup.models import TextEncoder, imagenet, pretrained

LOSSES = ("cosine", "seed", "both")


def student_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear(d_student, h) - BN - ReLU - Linear(h, d_teacher): the student's prediction of
    the teacher's embedding.

    Example::

        >>> import torch
        >>> from selfsup.methods.distill import student_head
        >>> student_head(128, 512, 1280)(torch.randn(4, 128)).shape
        torch.Size([4, 1280])
    """
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


@dataclass
class DistillConfig:
    teacher: str = ""                  # pretrained:NAME, timm:NAME, torchvision:ARCH, a selfsup run folder or export
    # pretrained:NAME: a local copy of its weight file (default: the wheel's); timm:NAME /
    # torchvision:ARCH: its ImageNet weight file (default: the library's cache, if there)
    teacher_weights: str = ""
    teacher_size: int = 0              # side the teacher sees, px (0 = the teacher's own input size)
    # seed by default: its target is the teacher's neighbourhood of each view among many
    # other images -- what kNN and retrieval use -- and it does not ask the student head to
    # reproduce every one of the teacher's dimensions; with small selfsup teachers on
    # `shapes` it learned at least as much as the cosine regression in each paired run
    # tried (single runs, so a weak preference; docs/methods.md).  cosine needs no queue and no
    # temperatures; both sums them
    loss: str = "seed"                 # cosine | seed | both
    hidden_dim: int = 1024             # student head width
    queue_size: int = 4096             # SEED: K teacher embeddings (65536 at ImageNet scale)
    student_temp: float = 0.2          # SEED tau_S (the paper's)
    teacher_temp: float = 0.01         # SEED tau_T (the paper's: a sharp target)
    seed_weight: float = 1.0           # loss=both: weight of the SEED term
    # the teacher's embeddings minus their running mean (an EMA over steps, training state):
    # pooled ReLU features all point near one direction (cosines ~0.9 between any two
    # images), and the student would mostly learn that direction; centring keeps what
    # tells images apart.  False: the raw embeddings
    center: bool = True
    center_momentum: float = 0.9       # EMA momentum of that mean (the first step takes the batch's mean)
    # True: the teacher embeds cache_views fixed views of each training image before the first
    # step, and each step distils one of them (fast; see the module docstring).  False: the
    # teacher embeds each step's views
    cache: bool = False
    cache_views: int = 1               # views per image in the cache: the image itself, then views drawn from `views`
    mixup: float = 0.0                 # Beta(a, a) mixup of the batch's inputs and targets (0 = off)
    cache_batch_size: int = 256        # images (texts) per teacher forward while filling the cache
    color_strength: float = 0.5        # view colour jitter strength (SimCLR's recipe)
    drop_words: float = 0.2            # text: share of a text's words the student's view drops (0 = the whole text)
    views: dict[str, Any] = field(default_factory=dict)  # ViewConfig overrides, e.g. {crop_scale: [0.2, 1]}


def teacher_error(spec: str) -> str | None:
    """Why ``spec`` is not a teacher spec at all (None when it may be one); said in one line
    before anything is loaded."""
    if not spec:
        return ("distill needs a teacher: --teacher SPEC (or method_cfg.teacher=SPEC), where SPEC is "
                "pretrained:NAME (see `selfsup list`), timm:NAME or torchvision:ARCH with --teacher-weights FILE, "
                "a selfsup run folder or an exported selfsup encoder, or for text a Hugging Face BERT folder")
    return None


def drop_words(texts: list[str], p: float, generator: torch.Generator) -> list[str]:
    """Each text with each of its words (whitespace-separated) dropped with probability
    ``p``, one uniform draw per word from ``generator``; a text keeps at least one word
    (the one with the largest draw) -- the word dropout of sentence-embedding
    augmentation (Wu et al., "CLEAR", arXiv 2012.15466: word deletion).

    Example::

        >>> import torch
        >>> from selfsup.methods.distill import drop_words
        >>> drop_words(["the cat sat on the mat", "hello"], 0.5, torch.Generator().manual_seed(0))
        ['cat mat', 'hello']
    """
    words = [t.split() for t in texts]
    if p <= 0:
        return [" ".join(w) for w in words]
    u = torch.rand(sum(len(w) for w in words), generator=generator).tolist()  # (total words,)
    out, at = [], 0
    for w in words:
        draws, at = u[at:at + len(w)], at + len(w)
        kept = [word for word, v in zip(w, draws) if v >= p]
        if not kept and w:
            kept = [w[max(range(len(w)), key=draws.__getitem__)]]
        out.append(" ".join(kept))
    return out


def token_ids(texts: list[str], encoder: TextEncoder, device: torch.device | str | None = None) -> torch.Tensor:
    """``texts`` as ``encoder`` reads them: its own tokenizer and length, (N, L) long on ``device``."""
    ids, _ = encoder.tokenizer.encode(texts, encoder.max_length)
    return torch.from_numpy(ids).to(device=device, dtype=torch.long)


@METHODS.register("distill", help="distil a frozen pretrained teacher (--teacher SPEC) into any backbone")
class Distill(Method):
    Config = DistillConfig
    min_batch_size = 2  # BatchNorm in the student head needs at least two samples
    modalities = ("image", "text")  # the student reads what the teacher reads
    presets = {
        # the student small_cnn on a CPU; the teacher would be most of each step's time, so it
        # embeds 4 fixed views of each image once (cache) at 112 px instead of its 224 (about a
        # quarter of the work).  Mild views (crops of at least half the image, flips, no colour
        # changes) and mixup: on shapes and photo_digits (glyphs held out) the student
        # generalised better from a few cached views than from one un-augmented image with
        # strong student augmentation, and mixup helped on both (docs/methods.md)
        "cpu": {"optim.name": "adamw", "optim.base_lr": 4e-3, "optim.weight_decay": 1e-4,
                "optim.warmup_epochs": 1, "train.batch_size": 64, "train.epochs": 60,
                "method_cfg.teacher": "pretrained:efficientnet_lite0", "method_cfg.teacher_size": 112,
                "method_cfg.cache": True, "method_cfg.cache_views": 4, "method_cfg.mixup": 1.0,
                "method_cfg.views": {"crop_scale": [0.5, 1.0], "jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0}},
        # ResNet-18 with the CIFAR stem; the teacher at its own input size
        "gpu": {"backbone": "resnet18", "optim.name": "adamw", "optim.base_lr": 2e-3,
                "optim.weight_decay": 0.05, "optim.warmup_epochs": 10, "train.batch_size": 256,
                "train.epochs": 200, "method_cfg.teacher": "pretrained:efficientnet_lite0"},
        # text (taken for cpu when the data is text): a compact BERT (Turc et al. 2019, arXiv
        # 1908.08962) learns from a sentence encoder given as --teacher; the teacher embeds each
        # whole text once (cache), the student reads word-dropped views of it -- a third of the
        # words dropped learnt a little more on `lang` than the default fifth (docs/results.md)
        "cpu-text": {"backbone": "bert", "backbone_cfg": {"layers": 2, "hidden": 128, "heads": 2},
                     "optim.name": "adamw", "optim.base_lr": 8e-3, "optim.eps": 1e-6, "optim.weight_decay": 0.01,
                     "optim.warmup_epochs": 1, "optim.clip_grad": 1.0, "train.batch_size": 64,
                     "train.epochs": 10, "method_cfg.cache": True, "method_cfg.drop_words": 0.35},
        # BERT-base shape as the student; the teacher embeds every step's views (consistent teaching)
        "gpu-text": {"backbone": "bert", "backbone_cfg": {"layers": 12, "hidden": 768, "heads": 12},
                     "optim.name": "adamw", "optim.base_lr": 1e-4, "optim.eps": 1e-6, "optim.weight_decay": 0.01,
                     "optim.warmup_epochs": 1, "optim.clip_grad": 1.0, "train.batch_size": 256,
                     "train.epochs": 40},
    }

    def __init__(self, encoder, cfg: DistillConfig, *, image_size: int, channels: int,
                 teacher: nn.Module | None = None):
        super().__init__(encoder, cfg, image_size=image_size, channels=channels)
        if cfg.loss not in LOSSES:
            raise SelfSupError(f"method_cfg.loss of distill must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
        if cfg.teacher_size < 0 or cfg.queue_size < 1 or cfg.hidden_dim < 1 or cfg.cache_views < 1 or cfg.mixup < 0:
            raise SelfSupError("distill needs teacher_size >= 0 (0 = the teacher's own), queue_size >= 1, "
                               "hidden_dim >= 1, cache_views >= 1 and mixup >= 0 (0 = off)")
        if teacher is None:
            teacher = self.load_teacher(cfg)
        teacher = teacher.eval().requires_grad_(False)
        self._frozen = (teacher,)  # a tuple: not a submodule (see the module docstring)
        name = cfg.teacher or type(teacher).__name__
        self.text = isinstance(encoder, TextEncoder)  # the student reads text, and so must the teacher
        if self.text and not isinstance(teacher, TextEncoder):
            raise SelfSupError(f"the teacher {name} embeds images but the data is text; give --teacher a text encoder: "
                               "a Hugging Face BERT folder (e.g. a sentence-transformers model), a selfsup text run "
                               "or its export")
        if isinstance(teacher, TextEncoder) and not self.text:
            raise SelfSupError(f"the teacher {name} is a text encoder but the data is images; give --teacher "
                               "pretrained:NAME, a selfsup image run or its export")
        if self.text and (cfg.mixup or cfg.cache_views > 1 or cfg.teacher_size):
            raise SelfSupError("distill on text takes no mixup, cache_views or teacher_size (they are image options); "
                               "its student view is method_cfg.drop_words")
        if not 0 <= cfg.drop_words < 1:
            raise SelfSupError(f"method_cfg.drop_words must be in [0, 1), got {cfg.drop_words}")
        net = getattr(teacher, "net", None)
        own = getattr(net, "input_size", None) or getattr(teacher, "kwargs", {}).get("image_size")
        self.teacher_side = cfg.teacher_size or own  # None: the views as they are (and text)
        if hasattr(net, "input_size") and self.teacher_side:
            net.input_size = self.teacher_side  # a pretrained net resizes to this itself: no second resize
        want = getattr(teacher, "kwargs", {}).get("in_chans")
        if want is not None and channels is not None and want != channels and not (want == 3 and channels == 1):
            raise SelfSupError(f"the teacher {name} takes {want}-channel images, the data has {channels}")
        self.teacher_chans = want
        t_dim = teacher.num_features
        self.head = student_head(encoder.num_features, cfg.hidden_dim, t_dim)
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, t_dim), dim=1))  # (K, D_t)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # next row to write
        self.register_buffer("center", torch.zeros(t_dim))  # running mean of the teacher's embeddings
        self.register_buffer("center_steps", torch.zeros((), dtype=torch.long))  # steps it has seen
        self.view_cfg = None if self.text else build_views(simclr_views(strength=cfg.color_strength), image_size,
                                                           cfg.views)
        # the steps look their samples up by index: in the cache, and text in its raw strings
        self.wants_index = cfg.cache or self.text
        # with cache: plain tensors, not buffers (not saved): the teacher's embeddings (V, N, D_t)
        # of V = cache_views views of each image (of each whole text: V = 1), and views 1.. as
        # uint8 (V - 1, N, C, S, S); text: the training texts (N,), kept by prepare
        self.cache: torch.Tensor | None = None
        self.cache_images: torch.Tensor | None = None
        self.texts: np.ndarray | None = None

    @staticmethod
    def load_teacher(cfg: DistillConfig) -> nn.Module:
        """The teacher a spec names, when this layer can load it: ``pretrained:NAME``,
        ``timm:NAME``, ``torchvision:ARCH``.  A run folder or an export is loaded by
        :func:`selfsup.encoders.load_teacher` and passed in as ``teacher=``."""
        why = teacher_error(cfg.teacher)
        if why:
            raise SelfSupError(why)
        if pretrained.is_pretrained(cfg.teacher):
            return pretrained.load_pretrained(cfg.teacher, cfg.teacher_weights or None)
        if imagenet.is_imagenet(cfg.teacher):
            return imagenet.load_imagenet(cfg.teacher, cfg.teacher_weights or None,
                                          option="method_cfg.teacher_weights")
        raise SelfSupError(f"distill teacher {cfg.teacher!r}: a run folder or an export is loaded by selfsup.pretrain "
                           "(build the method with teacher=selfsup.encoders.load_teacher(spec))")

    @property
    def teacher(self) -> nn.Module:
        return self._frozen[0]

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn)  # .to(device), .double(), channels-last: the teacher follows the student
        if self.cache is not None:
            self.cache = fn(self.cache)  # and so does the cache
            if self.cache_images is not None:
                self.cache_images = self.cache_images.to(self.cache.device)  # uint8: moved, never cast
        return self

    @torch.no_grad()
    def teach(self, views: torch.Tensor) -> torch.Tensor:
        """The teacher's embeddings (N, D_t) of ``views`` (N, C, S, S) in [0, 1], each at the
        teacher's side and channels; the teacher normalises them itself."""
        self.teacher.eval()
        if self.teacher_chans == 3 and views.shape[1] == 1:
            views = views.expand(-1, 3, -1, -1)
        side = self.teacher_side
        if side and tuple(views.shape[-2:]) != (side, side):
            views = F.interpolate(views, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        t = self.teacher(views)
        return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t  # autocast's output in float32

    @torch.no_grad()
    def teach_text(self, texts: list[str], device: torch.device) -> torch.Tensor:
        """The teacher's embeddings (N, D_t) of ``texts``, each read with the teacher's own
        tokenizer and length: its pooled last hidden states, for a Hugging Face folder the
        attention-masked mean (sentence-transformers' mean pooling)."""
        self.teacher.eval()
        t = self.teacher(token_ids(texts, self.teacher, device))
        return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t

    @torch.no_grad()
    def centered(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (N, D_t) minus the running mean of the teacher's embeddings, updated first
        with this step's global batch mean (every rank's: the same centre on all)."""
        if not self.cfg.center:
            return t
        t_all, _ = distributed.gather(t)  # (world * N, D_t)
        mean = t_all.mean(0).to(self.center.dtype)
        m = self.cfg.center_momentum if int(self.center_steps) else 0.0
        self.center.mul_(m).add_(mean, alpha=1 - m)
        self.center_steps.add_(1)
        return t - self.center.to(t.dtype)

    @torch.no_grad()
    def enqueue(self, t: torch.Tensor) -> None:
        """Write the step's unit teacher embeddings -- every rank's, gathered, so the queue is
        the same on all -- at ``queue_ptr`` and advance it (a ring buffer of any size)."""
        t, _ = distributed.gather(F.normalize(t, dim=1).to(self.queue.dtype))  # (world * 2N, D_t)
        k = self.cfg.queue_size
        t = t[-k:]
        ptr = int(self.queue_ptr)
        rows = (ptr + torch.arange(len(t), device=t.device)) % k
        self.queue[rows] = t
        self.queue_ptr.fill_((ptr + len(t)) % k)

    @torch.no_grad()
    def prepare(self, samples, device, *, progress: bool = False) -> None:
        """With ``cache``: the teacher's embeddings of ``cache_views`` views of every training
        sample in ``self.cache`` (V, N, D_t), row [v, i] for view v of sample i (view 0 the
        sample itself, the others drawn from ``views`` with a fixed seed, kept as uint8 in
        ``self.cache_images``); batched, in the samples' stored order.  Text: the raw
        training texts in ``self.texts`` (the steps draw their views from them) and, with
        ``cache``, the teacher's embedding of each whole text (:meth:`text_cache`)."""
        if self.text:
            self.texts = np.asarray(samples.texts, dtype=object)
            self.cache = self.text_cache(device, progress) if self.cfg.cache else None
            return
        if not self.cfg.cache:
            return
        from tqdm.auto import tqdm

        v = self.cfg.cache_views
        loader = Loader(samples, self.cfg.cache_batch_size, shuffle=False, drop_last=False)
        g = torch.Generator().manual_seed(0)  # fixed: a resumed run redraws the same views
        rows, images = [], []
        for _, batch in tqdm(loader.epoch(), total=loader.steps_per_epoch, disable=not progress,
                             desc=f"teacher cache ({v} view{'s' * (v > 1)})", unit="batch", dynamic_ncols=True):
            x = to_input(batch)  # (B, C, S, S) on the CPU: the views are drawn there
            stored = [augment(x, self.view_cfg, g).mul_(255).round_().to(torch.uint8) for _ in range(v - 1)]
            views = [x] + [w.float().div_(255) for w in stored]  # the teacher sees what the student will
            rows.append(torch.stack([self.teach(w.to(device)) for w in views]))  # (V, B, D_t)
            images.append(torch.stack(stored) if stored else x.new_empty((0, *x.shape), dtype=torch.uint8))
        self.cache = torch.cat(rows, dim=1)
        self.cache_images = torch.cat(images, dim=1).to(device)

    @torch.no_grad()
    def text_cache(self, device: torch.device, progress: bool) -> torch.Tensor:
        """(1, N, D_t): the teacher's embedding of each whole training text, in batches of
        texts of about one length (less padding: sorted by characters), rows in the
        samples' order."""
        from tqdm.auto import tqdm

        texts, bs = self.texts, self.cfg.cache_batch_size
        order = np.argsort([len(t) for t in texts], kind="stable")
        rows = [self.teach_text(list(texts[order[s:s + bs]]), device)
                for s in tqdm(range(0, len(texts), bs), disable=not progress, desc="teacher cache (text)",
                              unit="batch", dynamic_ncols=True)]
        cache = torch.empty(len(texts), rows[0].shape[1], dtype=rows[0].dtype, device=rows[0].device)
        cache[torch.from_numpy(order).to(cache.device)] = torch.cat(rows)  # back in the samples' order
        return cache[None]

    def mix(self, x: torch.Tensor, generator: torch.Generator, *targets: torch.Tensor):
        """Mixup (Zhang et al. 2018): each row of ``x`` (and of each target) blended with
        another row of the batch, weight lam ~ Beta(a, a) per row; ``x`` unchanged when
        ``mixup`` is 0."""
        a = self.cfg.mixup
        if not a:
            return (x, *targets)
        n = len(x)
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        lam = torch.from_numpy(np.random.default_rng(seed).beta(a, a, n)).to(x.device, x.dtype)  # (N,)
        pair = torch.randperm(n, generator=generator, device=generator.device).to(x.device)

        def blend(y):
            w = lam.to(y.dtype).view(-1, *([1] * (y.dim() - 1)))
            return w * y + (1 - w) * y[pair]
        return (blend(x), *(blend(t) for t in targets))

    def text_inputs(self, x: torch.Tensor, generator: torch.Generator, index: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's token ids (N, L) of its view of each text (``drop_words`` of the raw
        text, read with the student's tokenizer) and the teacher's embeddings (N, D_t): of the
        whole text with ``cache``, else of the very same view."""
        if self.texts is None or index is None or (self.cfg.cache and self.cache is None):
            raise SelfSupError("distill on text needs prepare(samples, device) before the first step and index= at "
                               "each step (the engine does both)")
        views = drop_words(list(self.texts[index.cpu().numpy()]), self.cfg.drop_words, generator)
        t = self.cache[0, index.to(self.cache.device)] if self.cfg.cache else self.teach_text(views, x.device)
        return token_ids(views, self.encoder, x.device), t  # (N, L), (N, D_t)

    def training_step(self, x, generator, index: torch.Tensor | None = None):
        if self.text:
            views, t = self.text_inputs(x, generator, index)
            t = self.centered(t)
        elif self.cfg.cache:
            if self.cache is None or index is None:
                raise SelfSupError("distill with method_cfg.cache needs prepare(samples, device) before the first "
                                   "step and index= at each step (the engine does both)")
            index = index.to(self.cache.device)
            pick = torch.randint(self.cfg.cache_views, (len(x),), generator=generator,
                                 device=generator.device).to(self.cache.device)  # (N,) a cached view per image
            views = x.clone()  # (N, C, S, S); view 0 is the image itself
            other = pick > 0
            if other.any():
                stored = self.cache_images[pick[other] - 1, index[other]]  # (n, C, S, S) uint8
                views[other] = stored.to(x.dtype).div_(255)
            t = self.cache[pick, index]  # (N, D_t): the teacher's embedding of exactly that view
            views, t = self.mix(views, generator, t)
            t = self.centered(t)
        else:
            views = torch.cat([augment(x, self.view_cfg, generator),
                               augment(x, self.view_cfg, generator)])  # (2N, C, S, S)
            (views,) = self.mix(views, generator)
            t = self.centered(self.teach(views))  # (2N, D_t), the same views: consistent teaching
        s = self.head(self.encoder(views))  # (2N, D_t); text and the cache: (N, D_t)
        loss, logs = 0.0, {}
        if self.cfg.loss in ("cosine", "both"):
            cos = cosine_distill_loss(s, t)
            loss, logs["cos_loss"] = loss + cos, cos.item()
        if self.cfg.loss in ("seed", "both"):
            seed = seed_loss(s, t, self.queue.clone(), self.cfg.student_temp, self.cfg.teacher_temp)
            weight = self.cfg.seed_weight if self.cfg.loss == "both" else 1.0
            loss, logs["seed_loss"] = loss + weight * seed, seed.item()
            self.enqueue(t)  # after the loss
        with torch.no_grad():
            logs["cos_sim"] = F.cosine_similarity(s.detach().to(t.dtype), t).mean().item()
        logs["z_std"] = normalized_std(s)
        return loss, logs
