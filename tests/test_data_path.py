"""The data path: loader order and shards, the on-disk folder cache, data from Python."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup
from selfsup.cli import main
from selfsup.data import IndexedView, ImageSet, SampleSpec, as_dataset, cache, create_dataset, folder, to_input
from selfsup.data.loader import Loader, epoch_order, shard
from selfsup.errors import SelfSupError
from selfsup.eval.features import extract_features
from selfsup.methods import create_method
from selfsup.models import create_backbone

from conftest import stop_and_resume


# ----------------------------------------------------------------------------------------
# order and shards


@pytest.mark.parametrize("n", [1, 10, 101])
def test_shards_of_an_epoch_are_disjoint_and_cover_every_sample_once(n):
    for world in (1, 2, 3):
        order = epoch_order(n, seed=5, epoch=2)
        shards = [shard(order, r, world) for r in range(world)]
        together = np.concatenate(shards)
        assert len(together) == n and sorted(together.tolist()) == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        # the loader hands out exactly these shards
        for r in range(world):
            loader = Loader(np.zeros(n), 4, seed=5, rank=r, world_size=world)
            np.testing.assert_array_equal(loader.epoch_indices(2), shards[r])


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    a, b = epoch_order(50, 3, 7), epoch_order(50, 3, 7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, epoch_order(50, 3, 8))
    assert not np.array_equal(a, epoch_order(50, 4, 7))
    with pytest.raises(ValueError, match="outside world size"):
        shard(a, 2, 2)


def test_training_steps_run_across_epochs_in_order_and_ranks_get_equal_steps():
    samples = ImageSet(np.zeros((23, 2, 2, 1), np.uint8), np.zeros(23, np.int64), np.arange(23).astype(str), [])
    for world in (1, 2, 3):
        loaders = [Loader(samples, 3, seed=1, rank=r, world_size=world) for r in range(world)]
        spe = loaders[0].steps_per_epoch
        assert all(ld.steps_per_epoch == spe for ld in loaders) and spe == (23 // world) // 3
        seen = [idx for idx, _ in loaders[0].steps(0, 2 * spe)]
        expected = [loaders[0].epoch_indices(e)[i * 3:(i + 1) * 3] for e in range(2) for i in range(spe)]
        for got, want in zip(seen, expected, strict=True):
            np.testing.assert_array_equal(got, want)
        # resuming mid-epoch continues with exactly the batches that were left
        resumed = [idx for idx, _ in loaders[0].steps(spe + 1, 2 * spe)]
        for got, want in zip(resumed, seen[spe + 1:], strict=True):
            np.testing.assert_array_equal(got, want)


def test_unshuffled_epoch_keeps_order_and_the_last_partial_batch():
    images = np.arange(7 * 4, dtype=np.uint8).reshape(7, 2, 2, 1)
    samples = ImageSet(images, np.zeros(7, np.int64), np.arange(7).astype(str), [])
    batches = list(Loader(samples, 3, shuffle=False, drop_last=False).epoch())
    assert [len(i) for i, _ in batches] == [3, 3, 1]
    np.testing.assert_array_equal(torch.cat([b for _, b in batches]).numpy(), images)
    x = to_input(batches[0][1])
    assert x.shape == (3, 1, 2, 2) and x.dtype == torch.float32 and float(x.max()) <= 1


# ----------------------------------------------------------------------------------------
# the folder cache


def _write_folder(root, n_per_class=6, size=24, seed=0):
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                base = 40 if c == "a" else 200
                img = np.clip(base + rng.integers(-30, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i}.png")


def _cache_dirs(cache_root):
    return [p for p in (cache_root / "folders").iterdir() if p.is_dir()]


def _open(root, cache_root, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = create_dataset(f"folder:{root}", image_size=16, cache_dir=cache_root, progress=False, **kw)
    return ds, [str(w.message) for w in caught]


def _count_decodes(monkeypatch):
    calls = []
    real = folder._try_decode
    monkeypatch.setattr(folder, "_try_decode", lambda f, size, *plan: calls.append(f) or real(f, size, *plan))
    return calls


def test_folder_is_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    _write_folder(tmp_path / "imgs")
    calls = _count_decodes(monkeypatch)
    first, _ = _open(tmp_path / "imgs", tmp_path / "cache")
    assert len(calls) == 24
    assert isinstance(first.train.images, cache.RecordFile)  # on disk, read by index
    assert first.spec == SampleSpec("image", image_size=16, channels=3, classes=("a", "b"))
    second, messages = _open(tmp_path / "imgs", tmp_path / "cache")
    assert len(calls) == 24 and not messages  # no decoding, no warning
    np.testing.assert_array_equal(np.asarray(first.train.images), np.asarray(second.train.images))
    np.testing.assert_array_equal(second.test.labels, [0] * 6 + [1] * 6)
    assert list(second.train.ids[:2]) == ["train/a/0.png", "train/a/1.png"]
    in_memory, _ = _open(tmp_path / "imgs", tmp_path / "cache", in_memory=True)
    assert type(in_memory.train.images) is np.ndarray
    np.testing.assert_array_equal(in_memory.train.images, np.asarray(second.train.images))
    # the cache holds what a direct decode gives
    direct = folder._decode(tmp_path / "imgs" / "train" / "b" / "3.png", 16)
    np.testing.assert_array_equal(second.train.read([9])[0], direct)
    assert len(_cache_dirs(tmp_path / "cache")) == 1  # no temporary folder left behind


@pytest.mark.parametrize("change", ["add", "remove", "replace"])
def test_a_changed_folder_is_cached_again(tmp_path, monkeypatch, change):
    root = tmp_path / "imgs"
    _write_folder(root)
    before, _ = _open(root, tmp_path / "cache")
    target = root / "train" / "a" / "0.png"
    if change == "add":
        Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(root / "train" / "b" / "new.png")
    elif change == "remove":
        target.unlink()
    else:
        Image.fromarray(np.full((24, 24, 3), 255, np.uint8)).save(target)
    calls = _count_decodes(monkeypatch)
    after, messages = _open(root, tmp_path / "cache")
    assert len(calls) > 0 and any("changed since it was cached" in m for m in messages)
    assert len(after.train) == {"add": 13, "remove": 11, "replace": 12}[change]
    if change == "replace":
        assert before.train.read([0]).max() < 255
        np.testing.assert_array_equal(after.train.read([0])[0], np.full((16, 16, 3), 255, np.uint8))
    assert len(_cache_dirs(tmp_path / "cache")) == 1


@pytest.mark.parametrize("damage", ["truncate", "manifest", "spot_record"])
def test_a_corrupt_cache_gives_one_line_and_is_rebuilt(tmp_path, damage):
    root = tmp_path / "imgs"
    _write_folder(root)
    good, _ = _open(root, tmp_path / "cache")
    reference = np.asarray(good.train.images)
    (where,) = _cache_dirs(tmp_path / "cache")
    records = where / "train.u8"
    if damage == "truncate":  # a half-written file
        os.truncate(records, records.stat().st_size // 2)
    elif damage == "manifest":
        (where / "manifest.json").write_text("{not json")
    else:  # the first record is one of the spot checks
        with open(records, "r+b") as f:
            f.write(b"\xff" * 16)
    rebuilt, messages = _open(root, tmp_path / "cache")
    (message,) = [m for m in messages if "corrupt" in m]
    assert "\n" not in message and "rebuilding it" in message
    np.testing.assert_array_equal(np.asarray(rebuilt.train.images), reference)


def test_a_corrupt_record_found_while_reading_invalidates_the_cache(tmp_path):
    root = tmp_path / "imgs"
    _write_folder(root)
    ds, _ = _open(root, tmp_path / "cache")
    reference = np.asarray(ds.train.images)
    (where,) = _cache_dirs(tmp_path / "cache")
    rec = ds.train.images.record_bytes
    with open(where / "train.u8", "r+b") as f:  # after opening: only the read can notice
        f.seek(rec + 5)
        f.write(bytes([(int(reference[1].reshape(-1)[5]) + 1) % 256]))
    with pytest.raises(SelfSupError, match="record 1 fails its checksum.*run the command again") as err:
        ds.train.read([0, 1])
    assert "\n" not in str(err.value)
    rebuilt, messages = _open(root, tmp_path / "cache")  # the manifest is gone: built again
    np.testing.assert_array_equal(np.asarray(rebuilt.train.images), reference)


def test_a_leftover_half_built_cache_is_ignored(tmp_path):
    root = tmp_path / "imgs"
    _write_folder(root)
    good, _ = _open(root, tmp_path / "cache")
    (where,) = _cache_dirs(tmp_path / "cache")
    (where / "manifest.json").unlink()  # as if the build had died before its last write
    again, messages = _open(root, tmp_path / "cache")
    assert not [m for m in messages if "corrupt" in m]
    np.testing.assert_array_equal(np.asarray(again.train.images), np.asarray(good.train.images))


def test_strict_run_fails_on_a_cache_built_with_skipped_files(tmp_path):
    root = tmp_path / "imgs"
    _write_folder(root)
    (root / "train" / "a" / "broken.png").write_bytes(b"not a png")
    ds, messages = _open(root, tmp_path / "cache")
    assert len(ds.train) == 12 and any("skipped 1 unreadable" in m for m in messages)
    with pytest.raises(SelfSupError, match="cannot read image .*broken.png"):
        _open(root, tmp_path / "cache", strict=True)


def test_subsets_of_a_disk_store_stay_lazy_and_read_the_right_rows(tmp_path):
    _write_folder(tmp_path / "imgs")
    ds, _ = _open(tmp_path / "imgs", tmp_path / "cache")
    full = np.asarray(ds.train.images)
    sub = ds.train.subset([5, 2, 7]).subset([2, 0])
    assert isinstance(sub.images, IndexedView) and isinstance(sub.images.base, cache.RecordFile)
    np.testing.assert_array_equal(sub.read([0, 1]), full[[7, 5]])
    assert list(sub.ids) == [ds.train.ids[7], ds.train.ids[5]]


def test_resume_from_the_cached_folder_matches_an_uninterrupted_run(tmp_path, one_thread):
    _write_folder(tmp_path / "imgs", n_per_class=12)
    ds, _ = _open(tmp_path / "imgs", tmp_path / "cache")
    assert isinstance(ds.train.images, cache.RecordFile)

    def make():
        torch.manual_seed(0)
        enc = create_backbone("small_cnn", in_chans=3, image_size=16, width=4)
        return create_method("simclr", enc, {}, image_size=16, channels=3)

    stop_and_resume(make, ds.train, tmp_path / "runs", stop_at=3, method="simclr")


# ----------------------------------------------------------------------------------------
# data from Python


def _labelled_arrays(n=96, size=16, seed=0):
    """Two classes that differ in brightness."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = np.clip(rng.normal(60 + 130 * labels[:, None, None, None], 25, (n, size, size, 3)), 0, 255)
    return images.astype(np.uint8), labels


class TorchImages(torch.utils.data.Dataset):
    """Yields (PIL image, label), like a torchvision dataset without ``targets``."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return Image.fromarray(self.images[i]), int(self.labels[i])


def _hf_dataset(images, labels):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["dark", "light"])})
    return datasets.Dataset.from_dict({"image": [Image.fromarray(x) for x in images], "label": labels.tolist()},
                                      features=features)


@pytest.mark.parametrize("kind", ["numpy", "torch", "hf"])
def test_python_data_pretrains_and_evaluates(tmp_path, kind, one_thread):
    images, labels = _labelled_arrays()
    data = {"numpy": lambda: (images, labels), "torch": lambda: TorchImages(images, labels),
            "hf": lambda: _hf_dataset(images, labels)}[kind]()
    ds = as_dataset(data)
    assert ds.spec.image_size == 16 and ds.spec.channels == 3 and len(ds.train) == 96
    np.testing.assert_array_equal(ds.train.read([3, 4]), images[[3, 4]])  # same pixels whatever the wrapper
    np.testing.assert_array_equal(ds.train.labels, labels)
    run = selfsup.pretrain("simclr", data, epochs=1, batch_size=32, out_dir=str(tmp_path / "run"),
                           progress=False, log=lambda s: None, overrides={"backbone_cfg.width": 4})
    assert run.config.data.source.startswith("python:") and (tmp_path / "run" / "encoder.safetensors").exists()
    result = selfsup.evaluate(run.encoder, data)
    assert result["n_test"] == 20 and result["n_train"] == 76  # 20% held out, stratified
    assert "held out" in result["test_split"]
    assert result["knn_top1"] > 0.9  # brightness separates the classes even at random init
    emb = selfsup.embed(run.encoder, data, tmp_path / "emb", progress=False)
    assert np.load(emb["embeddings"]).shape == (96, run.encoder.num_features)


def test_resume_of_a_python_data_run_needs_the_data_again(tmp_path):
    images, labels = _labelled_arrays(n=32)
    selfsup.pretrain("simclr", images, epochs=1, batch_size=16, out_dir=str(tmp_path), progress=False,
                     log=lambda s: None, overrides={"backbone_cfg.width": 4})
    with pytest.raises(SelfSupError, match="pass it again as data="):
        selfsup.pretrain(out_dir=str(tmp_path), resume=True, epochs=2, log=lambda s: None)
    with pytest.raises(SelfSupError, match="trained on 32 samples, this data has 16"):
        selfsup.pretrain(data=images[:16], out_dir=str(tmp_path), resume=True, epochs=2, log=lambda s: None)


def test_bad_python_data_is_a_clear_error():
    with pytest.raises(SelfSupError, match="square sides"):
        as_dataset(np.zeros((4, 8, 6, 3), np.uint8))
    with pytest.raises(SelfSupError, match="cannot use a set as data"):
        as_dataset({1, 2})
    with pytest.raises(SelfSupError, match="3 labels for 4 images"):
        as_dataset((np.zeros((4, 8, 8), np.uint8), np.zeros(3)))


def test_hf_path_on_the_command_line(tmp_path, capsys):
    images, labels = _labelled_arrays(n=40)
    hf = _hf_dataset(images, labels)
    import datasets

    datasets.DatasetDict({"train": hf, "test": hf.select(range(10))}).save_to_disk(str(tmp_path / "hfdata"))
    ds = create_dataset(f"hf:{tmp_path / 'hfdata'}")
    assert len(ds.train) == 40 and len(ds.test) == 10 and ds.train.classes == ["dark", "light"]
    code = main(["pretrain", "--data", f"hf:{tmp_path / 'hfdata'}", "--epochs", "1", "--batch-size", "20",
                 "--out", str(tmp_path / "run"), "--no-progress", "--set", "backbone_cfg.width=4"])
    assert code == 0 and "40 training images of 16px" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "run"), "--data", f"hf:{tmp_path / 'hfdata'}", "--no-linear"]) == 0
    assert main(["pretrain", "--data", f"hf:{tmp_path / 'nothing'}", "--out", str(tmp_path / "r2")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_features_stream_into_an_output_array(tmp_path):
    images, _ = _labelled_arrays(n=20)
    torch.manual_seed(0)
    enc = create_backbone("small_cnn", in_chans=3, image_size=16, width=4)
    out = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float32, shape=(20, enc.num_features))
    extract_features(enc, images, batch_size=6, out=out)
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), extract_features(enc, images).numpy(), atol=1e-6)
