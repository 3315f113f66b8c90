"""Tests for selfsup.data: the shapes generator, digits, image folders, torchvision stubs."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image
from sklearn.neighbors import KNeighborsClassifier

from selfsup.data import DATASETS, Dataset, ImageSet, create_dataset, shapes
from selfsup.errors import SelfSupError


def small_shapes(tmp_path, **kwargs) -> Dataset:
    kwargs = {"num_train": 64, "num_test": 16, "cache_dir": tmp_path, **kwargs}
    return create_dataset("shapes", **kwargs)


# ----------------------------------------------------------------------------------------
# ImageSet / Dataset / create_dataset


def test_imageset_subset_and_has_labels():
    s = ImageSet(
        images=np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3),
        labels=np.array([0, 1, 1, -1]),
        ids=np.array(["a", "b", "c", "d"]),
        classes=["x", "y"],
        factors=np.arange(8, dtype=np.float32).reshape(4, 2),
        factor_names=["f0", "f1"],
    )
    assert len(s) == 4 and not s.has_labels  # one label is -1
    sub = s.subset([2, 0])
    assert sub.has_labels
    assert list(sub.ids) == ["c", "a"]
    np.testing.assert_array_equal(sub.images[1], s.images[0])
    np.testing.assert_array_equal(sub.factors, [[4, 5], [0, 1]])
    assert s.subset(s.labels == 1).ids.tolist() == ["b", "c"]
    unlabeled = ImageSet(s.images, np.full(4, -1), s.ids, classes=[])
    assert not unlabeled.has_labels


def test_imageset_rejects_bad_arrays():
    with pytest.raises(ValueError):
        ImageSet(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2), np.array(["a", "b"]), [])
    with pytest.raises(ValueError):
        ImageSet(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3), np.array(["a", "b"]), [])


def test_every_source_has_help():
    assert {"shapes", "digits", "folder", "cifar10", "stl10"} <= set(DATASETS.names())
    for name in DATASETS.names():
        assert DATASETS.help(name).strip()


def test_unknown_source_lists_names():
    with pytest.raises(SelfSupError, match="unknown data source 'nope'.*digits.*shapes"):
        create_dataset("nope")


def test_bad_sizes_and_paths_are_user_errors(tmp_path):
    with pytest.raises(SelfSupError, match="image_size"):
        create_dataset("shapes", image_size=0, cache_dir=tmp_path)
    with pytest.raises(SelfSupError, match="takes no path"):
        create_dataset("shapes:/somewhere", cache_dir=tmp_path)
    with pytest.raises(SelfSupError, match="needs a path: use folder:PATH"):
        create_dataset("folder")


# ----------------------------------------------------------------------------------------
# shapes


def test_shapes_contract(tmp_path):
    ds = small_shapes(tmp_path)
    assert ds.name == "shapes" and ds.channels == 3 and ds.image_size == 32
    for split, n in [(ds.train, 64), (ds.test, 16)]:
        assert split.images.shape == (n, 32, 32, 3) and split.images.dtype == np.uint8
        assert split.labels.dtype == np.int64
        assert split.labels.min() >= 0 and split.labels.max() < len(shapes.CLASSES)
        assert split.classes == shapes.CLASSES and split.has_labels
        assert split.factors.shape == (n, len(shapes.FACTOR_NAMES))
        assert split.factors.dtype == np.float32
        assert split.factor_names == shapes.FACTOR_NAMES
        np.testing.assert_array_equal(split.factors[:, 0], split.labels)
        assert len(set(split.ids)) == n
    assert ds.train.ids[3] == "shapes/train/000003" and ds.test.ids[0] == "shapes/test/000000"
    assert not np.array_equal(ds.train.images[:16], ds.test.images)
    assert ds.train.images.std() > 30  # not blank


def test_shapes_image_size_override(tmp_path):
    ds = small_shapes(tmp_path, image_size=48)
    assert ds.train.images.shape == (64, 48, 48, 3) and ds.image_size == 48


def test_shapes_deterministic_in_seed(tmp_path):
    a = small_shapes(tmp_path / "a", seed=3)
    b = small_shapes(tmp_path / "b", seed=3)  # separate cache: generated twice
    c = small_shapes(tmp_path / "c", seed=4)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.test.factors, b.test.factors)
    assert not np.array_equal(a.train.images, c.train.images)
    assert not np.array_equal(a.train.factors, c.train.factors)


def test_shapes_factors_render_back_to_the_images(tmp_path):
    ds = small_shapes(tmp_path)
    np.testing.assert_array_equal(shapes.render(ds.train.factors, 32), ds.train.images)


def test_shapes_class_balance_and_factor_ranges():
    s = shapes.generate(2000, seed=0)
    fractions = np.bincount(s.labels, minlength=8) / len(s)
    assert fractions.min() > 0.09 and fractions.max() < 0.16
    f = {name: s.factors[:, i] for i, name in enumerate(shapes.FACTOR_NAMES)}
    assert f["pos_x"].min() >= 0.3 and f["pos_x"].max() <= 0.7
    assert set(np.unique(f["texture_kind"])) == {0, 1, 2, 3}
    # the object always keeps a brightness contrast against the background
    assert np.abs(f["object_value"] - f["background_value"]).min() > 0.33
    assert f["rotation"].std() > 1.0 and f["object_hue"].std() > 0.2


def test_raw_pixels_are_a_poor_feature():
    # Measured: 0.156 (k=20, 2000 train / 500 test); chance is 0.125.
    train = shapes.generate(2000, seed=0, split="train")
    test = shapes.generate(500, seed=0, split="test")
    knn = KNeighborsClassifier(n_neighbors=20).fit(train.images.reshape(2000, -1), train.labels)
    assert knn.score(test.images.reshape(500, -1), test.labels) < 0.35


def test_shape_classes_stay_distinguishable_under_rotation():
    # With colour, texture, position and size fixed (size at its smallest), only the
    # rotation varies: then the classes must be separable from raw pixels.
    rng = np.random.default_rng(0)
    factors = shapes.sample_factors(600, rng)
    fixed = {
        "pos_x": 0.5, "pos_y": 0.5, "scale": 0.2, "object_saturation": 0,
        "object_value": 1, "background_saturation": 0, "background_value": 0.15,
        "texture_kind": 0,
    }  # fmt: skip
    for name, value in fixed.items():
        factors[:, shapes.FACTOR_NAMES.index(name)] = value
    pixels = shapes.render(factors, 32).reshape(600, -1)  # (N, 32*32*3)
    labels = factors[:, 0].astype(int)
    knn = KNeighborsClassifier(n_neighbors=5).fit(pixels[:500], labels[:500])
    assert knn.score(pixels[500:], labels[500:]) > 0.9


def test_shapes_cache_round_trip(tmp_path, monkeypatch):
    first = small_shapes(tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and "seed0" in files[0].name
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary file

    def fail(*args, **kwargs):
        raise AssertionError("rendered although the cache holds the data")

    monkeypatch.setattr(shapes, "render", fail)
    second = small_shapes(tmp_path)
    np.testing.assert_array_equal(first.train.images, second.train.images)
    np.testing.assert_array_equal(first.test.factors, second.test.factors)
    assert list(first.train.ids) == list(second.train.ids)


def test_shapes_cache_key_includes_parameters(tmp_path):
    small_shapes(tmp_path)
    small_shapes(tmp_path, seed=1)
    small_shapes(tmp_path, image_size=16)
    small_shapes(tmp_path, num_train=65)
    assert len(list(tmp_path.glob("*.npz"))) == 4


def test_shapes_corrupt_cache_is_regenerated(tmp_path):
    reference = small_shapes(tmp_path / "ref")
    small_shapes(tmp_path)
    (cache_file,) = tmp_path.glob("*.npz")
    cache_file.write_bytes(b"not a zip file at all")
    with pytest.warns(UserWarning, match="regenerating"):
        regenerated = small_shapes(tmp_path)
    np.testing.assert_array_equal(regenerated.train.images, reference.train.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten file loads cleanly
        small_shapes(tmp_path)


def test_shapes_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "env"))
    create_dataset("shapes", num_train=8, num_test=8)
    assert len(list((tmp_path / "env").glob("shapes-*.npz"))) == 1


# ----------------------------------------------------------------------------------------
# digits


def test_digits_split():
    ds = create_dataset("digits")
    assert ds.train.images.shape == (1437, 8, 8, 1) and ds.test.images.shape == (360, 8, 8, 1)
    assert ds.train.images.dtype == np.uint8 and ds.train.images.max() == 255
    assert ds.channels == 1 and ds.image_size == 8
    assert ds.train.classes == [str(d) for d in range(10)] and ds.test.has_labels
    assert not set(ds.train.ids) & set(ds.test.ids)
    # stratified: every class is ~20% test
    counts = np.bincount(ds.test.labels, minlength=10) / np.bincount(
        np.concatenate([ds.train.labels, ds.test.labels]), minlength=10
    )
    assert np.all(np.abs(counts - 0.2) < 0.02)
    # the split does not move with the seed
    assert list(create_dataset("digits", seed=5).test.ids) == list(ds.test.ids)


def test_digits_resize_and_subsample():
    ds = create_dataset("digits", image_size=16, num_train=100, num_test=50, seed=1)
    assert ds.train.images.shape == (100, 16, 16, 1) and len(ds.test) == 50
    other = create_dataset("digits", num_train=100, seed=2)
    assert list(other.train.ids) != list(ds.train.ids)



# ----------------------------------------------------------------------------------------
# held-out sources: glyphs, photo_digits


def test_glyphs_split_by_typeface_and_deterministic():
    ds = create_dataset("glyphs", image_size=16)
    assert ds.train.images.shape == (2880, 16, 16, 3) and ds.test.images.shape == (700, 16, 16, 3)
    assert ds.train.classes == list("ABCDEFGHIJ")
    assert np.all(np.bincount(ds.train.labels, minlength=10) == 288)
    font = lambda ids: {i.split("/")[2].rsplit("-", 2)[0] for i in ids}  # noqa: E731
    assert len(font(ds.train.ids)) == 16 and len(font(ds.test.ids)) == 5
    assert not font(ds.train.ids) & font(ds.test.ids)  # test typefaces are unseen in training
    chars = {i.rsplit("-", 2)[1] for i in ds.test.ids}
    assert chars == set("ABCDEFGHIJabcdefghij")  # both cases, one label per letter
    again = create_dataset("glyphs", image_size=16, seed=3, num_train=100)
    lookup = dict(zip(ds.train.ids, ds.train.images))
    assert all(np.array_equal(lookup[i], img) for i, img in zip(again.train.ids, again.train.images))
    # the letter is drawn: with the same random draws, "A" and a blank differ on >5% of the pixels
    from selfsup.data import glyphs

    font_path = glyphs.font_dir() / glyphs.TEST_FONTS[0]
    a, blank = (glyphs._render_one(font_path, c, 32, np.random.default_rng(0)) for c in "A ")
    assert (np.abs(a.astype(int) - blank).max(axis=2) > 30).mean() > 0.05

# ----------------------------------------------------------------------------------------
# folder


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def solid(rgb, size=(20, 10)):
    return np.full((size[1], size[0], 3), rgb, dtype=np.uint8)  # (H, W, 3)


def test_folder_labelled_tree(tmp_path):
    save(tmp_path / "dog" / "a.png", solid((0, 0, 255)))
    save(tmp_path / "cat" / "x.JPG", solid((255, 0, 0)))
    save(tmp_path / "cat" / "nested" / "y.bmp", solid((255, 0, 0)))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a .txt file is ignored silently
        ds = create_dataset(f"folder:{tmp_path}", image_size=16)
    assert ds.test is None and ds.name == f"folder:{tmp_path}"
    train = ds.train
    assert train.classes == ["cat", "dog"] and train.has_labels
    assert train.ids.tolist() == ["cat/nested/y.bmp", "cat/x.JPG", "dog/a.png"]
    assert train.labels.tolist() == [0, 0, 1]
    assert train.images.shape == (3, 16, 16, 3) and train.images.dtype == np.uint8
    assert np.abs(train.images[2].astype(int) - [0, 0, 255]).max() <= 1
    assert np.abs(train.images[1].astype(int) - [255, 0, 0]).max() <= 3  # JPEG


def test_folder_center_crop(tmp_path):
    wide = np.zeros((10, 30, 3), np.uint8)  # (H, W, 3): white middle third, black sides
    wide[:, 10:20] = 255
    save(tmp_path / "wide.png", wide)
    image = create_dataset(f"folder:{tmp_path}", image_size=8).train.images[0]
    assert image.min() == 255  # the black sides were cropped away


def test_folder_unlabelled_flat(tmp_path):
    for i in range(3):
        save(tmp_path / f"{i}.png", solid((i, i, i)))
    ds = create_dataset(f"folder:{tmp_path}")
    assert ds.image_size == 64 and len(ds.train) == 3
    assert ds.train.classes == [] and ds.train.labels.tolist() == [-1, -1, -1]
    assert not ds.train.has_labels


def test_folder_train_test_layout(tmp_path):
    for split in ("train", "val"):
        save(tmp_path / split / "b" / "1.png", solid((1, 2, 3)))
    save(tmp_path / "train" / "a" / "1.png", solid((1, 2, 3)))
    ds = create_dataset(f"folder:{tmp_path}", image_size=8)
    assert ds.train.classes == ["a", "b"] and ds.train.labels.tolist() == [0, 1]
    assert ds.test.ids.tolist() == ["val/b/1.png"] and ds.test.labels.tolist() == [1]
    save(tmp_path / "val" / "c" / "1.png", solid((1, 2, 3)))
    with pytest.raises(SelfSupError, match=r"\['c'\]"):
        create_dataset(f"folder:{tmp_path}", image_size=8)


def test_folder_converts_modes_to_rgb(tmp_path):
    gray = np.full((8, 8), 100, np.uint8)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 0  # fully transparent -> black
    half = rgba.copy()
    half[..., 3] = 128  # half transparent -> ~100
    sixteen = np.full((8, 8), 128 * 257, np.uint16)  # 16-bit for 128
    save(tmp_path / "gray.png", gray)
    save(tmp_path / "rgba.png", rgba)
    save(tmp_path / "half.png", half)
    save(tmp_path / "sixteen.png", sixteen)
    palette = Image.fromarray(solid((0, 255, 0), (8, 8))).convert("P", palette=Image.ADAPTIVE)
    palette.save(tmp_path / "palette.gif")
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    assert Image.open(tmp_path / "palette.gif").mode == "P"

    ds = create_dataset(f"folder:{tmp_path}", image_size=8)
    pixel = {name: image[4, 4].tolist() for name, image in zip(ds.train.ids, ds.train.images)}
    assert ds.train.images.shape == (5, 8, 8, 3)
    assert pixel["gray.png"] == [100, 100, 100]
    assert pixel["rgba.png"] == [0, 0, 0]
    assert all(abs(v - 100) <= 1 for v in pixel["half.png"])
    assert pixel["sixteen.png"] == [128, 128, 128]
    assert pixel["palette.gif"] == [0, 255, 0]


def test_folder_corrupt_file_skipped_or_strict(tmp_path):
    save(tmp_path / "good.png", solid((9, 9, 9)))
    (tmp_path / "bad.png").write_bytes(np.random.default_rng(0).bytes(300))
    (tmp_path / "worse.jpg").write_bytes(b"")
    (tmp_path / "readme.txt").write_text("ignored, not counted")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable files .*bad\.png.*--strict") as rec:
        ds = create_dataset(f"folder:{tmp_path}")
    assert len([w for w in rec if "unreadable" in str(w.message)]) == 1  # one warning in all
    assert ds.train.ids.tolist() == ["good.png"]
    with pytest.raises(SelfSupError, match=r"bad\.png"):
        create_dataset(f"folder:{tmp_path}", strict=True)


def test_folder_empty_missing_or_unreadable(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(SelfSupError, match="no images found under"):
        create_dataset(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(SelfSupError, match="does not exist"):
        create_dataset(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="skipped 1"):
        with pytest.raises(SelfSupError, match="no images"):
            create_dataset(f"folder:{tmp_path / 'broken'}")


# ----------------------------------------------------------------------------------------
# torchvision sources: only the missing-files path (no downloads in tests)


@pytest.mark.parametrize(
    "source, folder", [("cifar10", "cifar-10-batches-py"), ("stl10", "stl10_binary")]
)
def test_torchvision_sources_missing(tmp_path, source, folder):
    with pytest.raises(SelfSupError, match=f"not found under .*--download.*{folder}"):
        create_dataset(f"{source}:{tmp_path}")
    with pytest.raises(SelfSupError, match="needs a path"):
        create_dataset(source)
