"""timm and torchvision ImageNet models with their weights from a local file (issue 27, items
1 and 3): ``timm:NAME`` / ``torchvision:ARCH`` as distillation teachers
(``--teacher-weights``) and as encoders with no run (``--weights``).  The weight files are
made here from randomly initialised models: nothing is downloaded, and without a file only
the library's cache (an empty one here) is looked in."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
import torch.nn.functional as F

import selfsup
from selfsup.encoders import load_encoder, load_teacher, teacher_spec_error
from selfsup.errors import SelfSupError
from selfsup.models import imagenet
from tests.test_cli import assert_one_line_error, run_cli
from tests.test_pretrained import tiny_folder

pytestmark = pytest.mark.usefixtures("one_thread")

TIMM = "test_resnet.r160_in1k"  # timm's tiny test ResNet (0.4 M parameters, 96-d, trained at 160 px)
TIMM_SPEC = f"timm:{TIMM}"
TV_SPEC = "torchvision:resnet18"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def timm_reference(seed: int = 0) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model(TIMM, pretrained=False, num_classes=1000).eval()  # with its classifier, as published


def torchvision_reference(seed: int = 0) -> torch.nn.Module:
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).eval()


def save(model: torch.nn.Module, path) -> str:
    """``model``'s whole state dict (classifier included): safetensors or a torch file."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return str(path)


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory):
    return save(timm_reference(), tmp_path_factory.mktemp("weights") / "test_resnet.safetensors")


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Empty Hugging Face and torch hub caches: what a machine that never downloaded has."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def fed_as_trained(x: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """``x`` ([0, 1], grey or RGB) as an ImageNet model takes it: RGB, resized, normalised."""
    x = x.expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# --- the model is the library's, with the file's weights, fed as trained ---------------------------


@pytest.mark.parametrize("library", ["timm", "torchvision"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_the_model_with_the_files_weights_equals_the_librarys_pooled_features(library, suffix, tmp_path):
    ref = timm_reference(3) if library == "timm" else torchvision_reference(3)
    path = save(ref, tmp_path / f"weights{suffix}")
    spec, size, mean, std = ((TIMM_SPEC, 160, (0.5,) * 3, (0.5,) * 3) if library == "timm" else
                             (TV_SPEC, 224, IMAGENET_MEAN, IMAGENET_STD))
    enc = imagenet.load_imagenet(spec, path)
    if library == "timm":
        ref.reset_classifier(0)
    else:
        ref.fc = torch.nn.Identity()
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(fed_as_trained(x, size, mean, std))  # (2, D): the pooled features
        assert not enc.training and enc.num_features == want.shape[1]
        assert torch.allclose(enc(x), want, atol=1e-5)
        assert torch.allclose(enc(x.mean(1, keepdim=True)), ref(fed_as_trained(x.mean(1, keepdim=True), size,
                                                                                 mean, std)), atol=1e-5)


def test_a_state_dict_inside_a_checkpoint_dict_loads_too(tmp_path):
    ref = timm_reference()
    torch.save({"state_dict": ref.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    enc = imagenet.load_imagenet(TIMM_SPEC, tmp_path / "ckpt.pth")
    assert torch.equal(enc.net.library_model.conv1[0].weight, ref.conv1[0].weight)


def test_weights_already_in_the_librarys_cache_are_used_without_a_file(empty_caches):
    # the layout huggingface_hub writes: models--ORG--NAME/{refs/main, snapshots/REV/FILE}
    repo = empty_caches / "hf" / f"models--timm--{TIMM}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    ref = timm_reference(5)
    save(ref, repo / "snapshots" / ("0" * 40) / "model.safetensors")
    enc = imagenet.load_imagenet(TIMM_SPEC)
    assert torch.equal(enc.net.library_model.conv1[0].weight, ref.conv1[0].weight)
    assert teacher_spec_error(TIMM_SPEC) is None
    tv = torchvision_reference(5)
    (empty_caches / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    save(tv, empty_caches / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    enc = imagenet.load_imagenet(TV_SPEC)
    assert torch.equal(enc.net.library_model.conv1.weight, tv.conv1.weight)


def test_a_selfsup_export_rebuilds_the_same_encoder(timm_file, tmp_path):
    enc = load_encoder(TIMM_SPEC, "cpu", weights=timm_file)
    selfsup.export_encoder(enc, tmp_path / "enc.safetensors")
    again = load_encoder(tmp_path / "enc.safetensors", "cpu")
    x = torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(again(x), enc(x))
    assert again.net.input_size == 160


# --- one-line errors; nothing is downloaded ------------------------------------------------------


def test_a_missing_file_a_wrong_model_and_no_cached_weights_are_one_line_errors(timm_file, tmp_path, empty_caches):
    with pytest.raises(SelfSupError, match=r"^--weights .*nowhere.safetensors: no such file$"):
        imagenet.load_imagenet(TIMM_SPEC, tmp_path / "nowhere.safetensors")
    tv_file = save(torchvision_reference(), tmp_path / "resnet18.pt")
    for spec, path in ((TIMM_SPEC, tv_file), ("torchvision:resnet34", tv_file), (TV_SPEC, timm_file)):
        with pytest.raises(SelfSupError, match="does not fit .*missing") as err:
            imagenet.load_imagenet(spec, path)
        assert "\n" not in str(err.value) and spec in str(err.value)
    for spec, needle in ((TIMM_SPEC, f"hf download timm/{TIMM} model.safetensors"),
                         (TV_SPEC, "https://download.pytorch.org/models/resnet18-f37072fd.pth")):
        with pytest.raises(SelfSupError, match="nothing is downloaded") as err:
            imagenet.load_imagenet(spec)
        assert needle in str(err.value) and "--weights FILE" in str(err.value) and "\n" not in str(err.value)
        assert needle in teacher_spec_error(spec) and "--teacher-weights FILE" in teacher_spec_error(spec)
    with pytest.raises(SelfSupError, match="timm has no model"):
        imagenet.load_imagenet("timm:no_such_net")
    with pytest.raises(SelfSupError, match="--weights applies to"):
        load_encoder(tmp_path, weights=timm_file)


@pytest.mark.parametrize(("args", "needle"), [
    (["--teacher", TIMM_SPEC, "--teacher-weights", "nowhere.safetensors"], "no such file"),
    (["--teacher", TV_SPEC], "nothing is downloaded"),
    (["--teacher", "torchvision:no_such_net", "--teacher-weights", "x.pt"], "torchvision has no classification"),
])
def test_a_bad_library_teacher_is_one_line_before_any_data_is_read(args, needle, capsys, tmp_path, empty_caches):
    code, _, err = run_cli(capsys, "pretrain", "--method", "distill", "--data", f"folder:{tmp_path / 'no_data'}",
                           "--out", str(tmp_path / "run"), *args)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "run").exists()


# --- as a teacher, and as an encoder with no run -------------------------------------------------


def test_distill_from_a_timm_teacher_runs_and_leaves_the_teacher_as_loaded(timm_file, tmp_path):
    run = selfsup.pretrain("distill", "shapes", backbone="small_cnn", image_size=16, num_train=64, batch_size=16,
                           max_steps=2, out_dir=tmp_path / "run", progress=False,
                           overrides={"method_cfg.teacher": TIMM_SPEC, "method_cfg.teacher_weights": timm_file,
                                      "method_cfg.teacher_size": 64, "method_cfg.queue_size": 64,
                                      "backbone_cfg.width": 4})
    assert run.history[-1]["step"] == 2 and np.isfinite(run.history[-1]["loss"])
    teacher = run.method.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert teacher.net.input_size == 64  # teacher_size: the teacher resizes to it itself
    loaded = load_teacher(TIMM_SPEC, timm_file).state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in teacher.state_dict().items())
    assert not any(k.startswith("teacher") for k in run.method.state_dict())


def test_evaluate_a_timm_model_with_weights_on_digits_from_the_command_line(timm_file, capsys):
    code, out, err = run_cli(capsys, "evaluate", TIMM_SPEC, "--weights", timm_file, "--data", "digits",
                             "--no-linear")
    assert code == 0, err
    res = json.loads(out[out.index("{"):])
    assert res["n_train"] == 1437 and res["feature_dim"] == 96 and 0 <= res["knn_top1"] <= 1


def test_embed_label_efficiency_and_inspect_take_the_spec_and_weights(timm_file, tmp_path, capsys):
    data = "folder:" + str(tiny_folder(tmp_path / "imgs", per_class=6, size=16))
    code, out, err = run_cli(capsys, "embed", TIMM_SPEC, "--weights", timm_file, "--data", data,
                             "--out", str(tmp_path / "emb"))
    assert code == 0, err
    assert np.load(tmp_path / "emb" / "embeddings.npy").shape == (12, 96)
    code, out, err = run_cli(capsys, "label-efficiency", TIMM_SPEC, "--weights", timm_file, "--data", data,
                             "--fractions", "1", "--seeds", "1", "--protocols", "knn", "--out", str(tmp_path / "le"))
    assert code == 0, err
    assert (tmp_path / "le" / "label_efficiency.json").is_file()
    code, out, err = run_cli(capsys, "inspect", TIMM_SPEC, "--weights", timm_file, "--data", data, "--projection",
                             "pca", "--max-samples", "12", "--out", str(tmp_path / "ins"))
    assert code == 0, err
    assert "effective_rank" in out and (tmp_path / "ins" / "inspect.json").is_file()


def test_distill_from_a_torchvision_teacher_from_the_command_line(tmp_path, capsys):
    path = save(torchvision_reference(), tmp_path / "resnet18.pth")
    code, out, err = run_cli(capsys, "pretrain", "--method", "distill", "--teacher", TV_SPEC, "--teacher-weights", path,
                             "--data", "shapes", "--image-size", "16", "--num-train", "32", "--batch-size", "16",
                             "--max-steps", "2", "--no-progress", "--out", str(tmp_path / "run"),
                             "--set", "method_cfg.teacher_size=32", "--set", "backbone_cfg.width=4")
    assert code == 0, err
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["method_cfg"]
    assert saved["teacher"] == TV_SPEC and saved["teacher_weights"] == path  # what a resumed run reloads


def test_a_vit_is_built_at_the_weights_size_and_can_be_fed_smaller(tmp_path):
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("test_vit.r160_in1k", pretrained=False, num_classes=1000).eval()
    enc = imagenet.load_imagenet("timm:test_vit.r160_in1k", save(ref, tmp_path / "vit.safetensors"))
    ref.reset_classifier(0)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(enc(x), ref(fed_as_trained(x, 160, (0.5,) * 3, (0.5,) * 3)), atol=1e-5)
        enc.net.input_size = 64  # what distill's teacher_size does: the position embeddings are interpolated
        assert enc(x).shape == (2, enc.num_features) and torch.isfinite(enc(x)).all()
