"""The files a medical (or remote-sensing) user has (issue 26, case 13): 12- and 16-bit
images brought to 8 bits through a window instead of a fixed 1/257, DICOM read with its
rescale, MONOCHROME1 and frames, and images with any number of channels, end to end.
Every file is written by the test itself; images are 16 px, runs 2 steps."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.api import dataset_for, load_data, load_encoder
from selfsup.config import RunConfig, apply_overrides
from selfsup.data import create_dataset, folder
from selfsup.data.views import augment, mae_views, simclr_views
from selfsup.encoders import export_encoder
from selfsup.errors import SelfSupError
from selfsup.models import create_backbone

from test_cli import assert_one_line_error, run_cli
from test_contracts import library_model

pydicom = pytest.importorskip("pydicom")
tifffile = pytest.importorskip("tifffile")

SIZE = 16
FAST = ["--max-steps", "2", "--batch-size", "4", "--image-size", str(SIZE), "--set", "train.monitor_every=0",
        "--no-progress"]


# --- writing the files ------------------------------------------------------------------


def write_dicom(path, pixels, *, photometric="MONOCHROME2", slope=None, intercept=None, bits=12,
                compressed=False):
    """A DICOM file (Explicit VR Little Endian unless ``compressed``) holding ``pixels``:
    (H, W) or (frames, H, W) unsigned stored values."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGLSLossless if compressed else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    pixels = np.asarray(pixels)
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if compressed:  # JPEG-LS: no decoder for it is installed with selfsup
        from pydicom.encaps import encapsulate

        ds.add_new(0x7FE00010, "OB", encapsulate([b"\xff\xd8\xff\xf7" + bytes(40)]))
    else:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return path


def gradient(seed, lo=0, hi=4095):
    """16 x 16 stored values spanning exactly lo..hi, a different picture per seed."""
    rng = np.random.default_rng(seed)
    values = np.linspace(lo, hi, SIZE * SIZE).round().astype(np.int64)
    return rng.permutation(values).reshape(SIZE, SIZE)


def dicom_folder(root):
    """Two classes of 12-bit CT-like files: ``a`` plain (0..4095), ``b`` stored 512..2559
    with slope 2 and intercept -1024 (0..4094 after the rescale); in ``a`` one MONOCHROME1
    copy of a0 and one compressed file, in ``b`` one file of three frames."""
    for c in "ab":
        (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(6):
        write_dicom(root / "a" / f"a{i}.dcm", gradient(i))
    for i in range(5):
        write_dicom(root / "b" / f"b{i}.dcm", gradient(10 + i, 512, 2559), slope=2, intercept=-1024)
    write_dicom(root / "a" / "mono1.dcm", gradient(0), photometric="MONOCHROME1")
    write_dicom(root / "a" / "compressed.dcm", gradient(1), compressed=True)
    write_dicom(root / "b" / "multi.dcm", np.stack([gradient(20 + k) for k in range(3)]))
    return root


def load(root, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = create_dataset(f"folder:{root}", image_size=SIZE, progress=False, **options)
    return ds, [str(w.message) for w in caught]


def image_of(ds, image_id):
    ids = list(ds.train.ids)
    return ds.train.read([ids.index(image_id)])[0]


# --- DICOM ------------------------------------------------------------------------------


def test_dicom_12_bit_folder_is_windowed_rescaled_inverted_split_into_frames_and_skips_compressed(tmp_path):
    root = dicom_folder(tmp_path / "ct")
    ds, messages = load(root)
    ids = list(ds.train.ids)
    # one sample per file, one per frame of the multi-frame file; the compressed one skipped and counted
    assert sorted(ids) == sorted([f"a/a{i}.dcm" for i in range(6)] + ["a/mono1.dcm"]
                                 + [f"b/b{i}.dcm" for i in range(5)] + [f"b/multi.dcm#{k}" for k in range(3)])
    assert any("skipped 1 unreadable" in m and "compressed.dcm" in m for m in messages), messages
    images = ds.train.read(np.arange(len(ids)))
    assert images.min() <= 5 and images.max() >= 250  # 12 bits span the 8-bit range, not 0..16
    # the rescale is applied: b's stored 512..2559 become 0..4094, the same range as a's 0..4095
    for i in range(5):
        b = image_of(ds, f"b/b{i}.dcm")
        assert b.min() <= 1 and b.max() >= 254, (i, b.min(), b.max())
    # MONOCHROME1: the lowest value is white
    a0, mono1 = image_of(ds, "a/a0.dcm").astype(int), image_of(ds, "a/mono1.dcm").astype(int)
    assert np.abs(mono1 - (255 - a0)).max() <= 1
    # frames are separate samples, each its own picture
    frames = [image_of(ds, f"b/multi.dcm#{k}") for k in range(3)]
    assert not np.array_equal(frames[0], frames[1])
    with pytest.raises(SelfSupError, match="compressed.dcm"):
        load(root, strict=True)


def test_dicom_without_an_extension_is_found_by_its_magic(tmp_path):
    root = tmp_path / "plain"
    root.mkdir()
    write_dicom(root / "IM0001", gradient(0))
    write_dicom(root / "1.2.840.113619.2.55", gradient(1))  # named by its UID
    (root / "README").write_text("not an image")
    ds, _ = load(root)
    assert sorted(ds.train.ids) == ["1.2.840.113619.2.55", "IM0001"]


def test_dicom_folder_pretrains_and_evaluates_from_the_command_line(capsys, tmp_path):
    root = dicom_folder(tmp_path / "ct")
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        code, out, err = run_cli(capsys, "pretrain", "--data", f"folder:{root}", "--out", str(run),
                                 "--set", "backbone_cfg.width=8", *FAST)
    assert code == 0, err
    assert "15 training images of 16px x 3 channels" in out
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        code, out, err = run_cli(capsys, "evaluate", str(run), "--data", f"folder:{root}", "--k", "3")
    assert code == 0, err
    result = json.loads((run / "eval.json").read_text())
    assert 0 <= result["knn_top1"] <= 1 and 0 <= result["linear_top1"] <= 1


def test_dicom_channels_1_gives_grey_images(tmp_path):
    root = dicom_folder(tmp_path / "ct")
    ds, _ = load(root, channels=1)
    assert ds.channels == 1
    three, _ = load(root)
    np.testing.assert_array_equal(image_of(ds, "a/a3.dcm")[..., 0], image_of(three, "a/a3.dcm")[..., 0])


# --- 16-bit PNG and TIFF, windows -------------------------------------------------------


def deep_folder(root):
    root.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(gradient(i).astype(np.uint16)).save(root / f"x{i}.png")  # mode I;16, 12-bit values
        tifffile.imwrite(root / f"t{i}.tif", gradient(5 + i).astype(np.uint16))
    tifffile.imwrite(root / "rgb16.tif", np.stack([gradient(9 + k) for k in range(3)], -1).astype(np.uint16),
                     photometric="rgb")
    return root


def test_12_bit_png_and_16_bit_tiff_span_the_8_bit_range(tmp_path):
    root = deep_folder(tmp_path / "deep")
    assert Image.open(root / "x0.png").mode == "I;16"
    ds, messages = load(root)
    assert not any("skipped" in m for m in messages), messages
    for image_id in [*(f"x{i}.png" for i in range(3)), *(f"t{i}.tif" for i in range(3)), "rgb16.tif"]:
        image = image_of(ds, image_id)
        assert image.min() <= 5 and image.max() >= 250, (image_id, image.min(), image.max())
    # a value keeps its place: 4095 * k / 4 -> about 255 * k / 4, one window for the whole folder
    x0, values = image_of(ds, "x0.png")[..., 0].astype(int), gradient(0)
    np.testing.assert_allclose(x0, values / 4095 * 255, atol=1)
    rgb = image_of(ds, "rgb16.tif").astype(int)
    for k in range(3):  # the colour channels stay apart
        np.testing.assert_allclose(rgb[..., k], gradient(9 + k) / 4095 * 255, atol=1)


def test_a_window_set_by_the_user_clips_as_asked(capsys, tmp_path):
    root = deep_folder(tmp_path / "deep")
    ds, _ = load(root, window="1000,3000")
    x0, values = image_of(ds, "x0.png")[..., 0].astype(int), gradient(0)
    expected = np.clip((values - 1000) / 2000, 0, 1) * 255
    np.testing.assert_allclose(x0, expected, atol=1)
    assert x0[values <= 1000].max() == 0 and x0[values >= 3000].min() == 255
    # the container's full range: what 1/257 gave
    full, _ = load(root, window="container")
    np.testing.assert_allclose(image_of(full, "x0.png")[..., 0], values / 65535 * 255, atol=1)
    # the largest value observed: 0..4095 here
    peak, _ = load(root, window="max")
    np.testing.assert_allclose(image_of(peak, "x0.png")[..., 0], values / 4095 * 255, atol=1)

    # from the command line, typed and checked before any data is read; the encoder keeps it
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "pretrain", "--data", f"folder:{root}", "--out", str(run),
                           "--set", "data.window=1000,3000", "--set", "backbone_cfg.width=8", *FAST)
    assert code == 0, err
    enc = load_encoder(run, device="cpu")
    again = dataset_for(enc, f"folder:{root}")
    np.testing.assert_array_equal(image_of(again, "x0.png"), image_of(ds, "x0.png"))
    for bad in ("3000,1000", "lots", "1,2,3"):
        code, _, err = run_cli(capsys, "pretrain", "--data", f"folder:{root}", "--out", str(tmp_path / "bad"),
                               "--set", f"data.window={bad}", *FAST)
        assert_one_line_error(code, err, "data.window")
    # a YAML list works as well as LO,HI
    cfg = apply_overrides(RunConfig(), {"data.source": f"folder:{root}", "data.image_size": SIZE,
                                        "data.window": [1000, 3000], "train.progress": False})
    np.testing.assert_array_equal(image_of(load_data(cfg), "x0.png"), image_of(ds, "x0.png"))


def old_decode(file, size):
    """How a folder image was decoded before bit depths were kept (8-bit files only)."""
    with Image.open(file) as image:
        image.draft(None, (size, size))
        image = image.convert("RGBA") if "A" in image.mode or "transparency" in image.info else image
        if image.mode == "RGBA":
            rgba = np.asarray(image, dtype=np.float32)
            image = Image.fromarray(np.round(rgba[..., :3] * rgba[..., 3:] / 255).astype(np.uint8))
        rgb = image.convert("RGB")
    w, h = rgb.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return np.asarray(rgb.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR))


def test_8_bit_images_decode_exactly_as_before(tmp_path):
    root = tmp_path / "eight"
    root.mkdir()
    rng = np.random.default_rng(0)
    rgb = (rng.random((24, 20, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(root / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(root / "grey.png")
    Image.fromarray(np.concatenate([rgb, rgb[..., :1]], -1)).save(root / "rgba.png")
    Image.fromarray(rgb).convert("P").save(root / "palette.gif")
    Image.fromarray(rgb).save(root / "photo.jpg", quality=90)
    Image.fromarray(rgb).save(root / "plain.tif")
    ds, _ = load(root)
    assert ds.channels == 3
    for name in ("rgb.png", "grey.png", "rgba.png", "palette.gif", "photo.jpg", "plain.tif"):
        np.testing.assert_array_equal(image_of(ds, name), old_decode(root / name, SIZE), err_msg=name)
    # the cache of an 8-bit folder keeps its place, so caches built before are used as they are
    key = __import__("hashlib").sha1(f"{root.resolve()}|{SIZE}".encode()).hexdigest()[:16]
    assert folder._cache_folder(root.resolve(), SIZE, tmp_path / "c").name == f"eight-{SIZE}px-{key}"


def test_rgba_png_is_rgb_unless_four_channels_are_asked_for(tmp_path):
    root = tmp_path / "rgba"
    root.mkdir()
    rgba = (np.random.default_rng(1).random((SIZE, SIZE, 4)) * 255).astype(np.uint8)
    for i in range(2):
        Image.fromarray(rgba).save(root / f"p{i}.png")
    ds, _ = load(root)
    assert ds.channels == 3
    four, _ = load(root, channels=4)
    assert four.channels == 4
    np.testing.assert_array_equal(image_of(four, "p0.png"), rgba)  # alpha kept as data, not composited


# --- any number of channels -------------------------------------------------------------


def band_folder(root, bands=4, per_class=6):
    rng = np.random.default_rng(0)
    for c, shift in (("water", 0), ("field", 120)):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            data = (rng.random((SIZE, SIZE, bands)) * 120 + shift).astype(np.uint8)
            tifffile.imwrite(root / c / f"{c}{i}.tif", data, photometric="minisblack", planarconfig="contig")
    return root


def test_a_4_band_tiff_stays_4_bands(tmp_path):
    root = band_folder(tmp_path / "bands")
    ds, messages = load(root)
    assert ds.channels == 4, messages
    stored = tifffile.imread(root / "water" / "water2.tif")
    np.testing.assert_array_equal(image_of(ds, "water/water2.tif"), stored)  # 8-bit bands as they are
    # RGB plus a near-infrared band that TIFF marks as data (an unspecified extra sample)
    rgbn = tmp_path / "rgbn"
    rgbn.mkdir()
    for i in range(2):
        tifffile.imwrite(rgbn / f"r{i}.tif", stored, photometric="rgb", extrasamples=["unspecified"])
    ds, _ = load(rgbn)
    assert ds.channels == 4
    np.testing.assert_array_equal(image_of(ds, "r0.tif"), stored)


@pytest.mark.parametrize("method,backbone,library", [("simclr", "resnet18", "torchvision"),
                                                     ("mae", "vit_mae_tiny", "timm"),
                                                     ("simclr", "small_cnn", None)])
def test_a_4_band_folder_pretrains_exports_reloads_and_evaluates(capsys, tmp_path, method, backbone, library):
    root = band_folder(tmp_path / "bands")
    run = tmp_path / "run"
    extra = ["--set", "backbone_cfg.width=8"] if backbone == "small_cnn" else \
        ["--set", "backbone_cfg.depth=1"] if backbone.startswith("vit") else []
    code, out, err = run_cli(capsys, "pretrain", "--method", method, "--backbone", backbone, "--data",
                             f"folder:{root}", "--out", str(run), *extra, *FAST)
    assert code == 0, err
    assert "x 4 channels" in out
    enc = load_encoder(run, device="cpu")
    assert enc.kwargs["in_chans"] == 4 and enc.mean.numel() == 4  # statistics per channel
    ds = dataset_for(enc, f"folder:{root}")
    x = torch.from_numpy(ds.train.read(np.arange(4))).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        h = enc(x)
    code, _, err = run_cli(capsys, "export", str(run), "--out", str(tmp_path / "enc.safetensors"))
    assert code == 0, err
    spec_enc = load_encoder(tmp_path / "enc.safetensors", device="cpu")
    assert spec_enc.kwargs["in_chans"] == 4
    with torch.no_grad():
        assert torch.equal(spec_enc(x), h)
    if library:
        out_file = tmp_path / f"{library}.safetensors"
        code, _, err = run_cli(capsys, "export", str(run), "--format", library, "--out", str(out_file))
        assert code == 0, err
        how = json.loads(out_file.with_suffix(".json").read_text())
        assert "4" in how["build"][0] + " ".join(how["build"][1:]) and len(how["mean"]) == 4
        assert (library_model(out_file.with_suffix(".json"), x) - h).abs().max() < 1e-5
    code, _, err = run_cli(capsys, "evaluate", str(run), "--data", f"folder:{root}", "--k", "3")
    assert code == 0, err
    assert "knn_top1" in json.loads((run / "eval.json").read_text())


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "shufflenet_v2_x0_5"])
def test_torchvision_models_other_than_resnets_take_any_channel_count(arch, tmp_path):
    enc = create_backbone(f"torchvision:{arch}", in_chans=4, image_size=32).eval()
    x = torch.rand(2, 4, 32, 32)
    with torch.no_grad():
        h = enc(x)
    assert h.shape == (2, enc.num_features)
    path = export_encoder(enc, tmp_path / "tv.safetensors", format="torchvision")
    assert (library_model(path.with_suffix(".json"), x) - h).abs().max() < 1e-5


def test_views_make_no_colour_assumptions_for_bands():
    x = torch.rand(6, 4, SIZE, SIZE)
    x[:, 3] *= 0.1  # a dim band beside bright ones
    for recipe in (simclr_views(size=12), mae_views(size=12)):
        v = augment(x, recipe, torch.Generator().manual_seed(0))
        assert v.shape == (6, 4, 12, 12) and 0 <= v.min() and v.max() <= 1
    # contrast pulls each band toward its own mean, not toward the mean of all bands
    from selfsup.data.views import adjust_contrast

    flat = adjust_contrast(x, torch.zeros(6))
    np.testing.assert_allclose(flat[:, 3].mean((1, 2)), x[:, 3].mean((1, 2)), atol=1e-6)
    np.testing.assert_allclose(flat[:, 0].mean((1, 2)), x[:, 0].mean((1, 2)), atol=1e-6)


def test_arrays_and_pictures_of_4_bands(tmp_path):
    from selfsup.data import as_dataset, resize_images
    from selfsup.output.plots import image_grid

    bands = (np.random.default_rng(0).random((3, SIZE, SIZE, 4)) * 255).astype(np.uint8)
    assert as_dataset(bands).channels == 4
    np.testing.assert_array_equal(as_dataset(bands.transpose(0, 3, 1, 2)).train.read([0, 1, 2]), bands)  # NCHW
    assert resize_images(bands, 8).shape == (3, 8, 8, 4)
    assert image_grid([bands], ["bands"], tmp_path / "grid.png").is_file()  # the first three shown as RGB


def test_a_cache_of_16_bit_images_built_before_windows_is_built_again(tmp_path):
    deep, eight = tmp_path / "deep", tmp_path / "eight"
    for root, dtype in ((deep, np.uint16), (eight, np.uint8)):
        root.mkdir()
        for i in range(3):
            Image.fromarray(gradient(i, 0, 4095 if dtype == np.uint16 else 255).astype(dtype)).save(root / f"{i}.png")
    for root in (deep, eight):
        load(root, cache_dir=tmp_path / "c")
        manifest = folder._cache_folder(root.resolve(), SIZE, tmp_path / "c") / "manifest.json"
        old = {k: v for k, v in json.loads(manifest.read_text()).items() if k not in ("window", "channels")}
        manifest.write_text(json.dumps(old))  # as an earlier selfsup wrote it
    _, messages = load(deep, cache_dir=tmp_path / "c")
    assert any("cached by an earlier selfsup" in m for m in messages), messages
    _, messages = load(eight, cache_dir=tmp_path / "c")
    assert not messages  # an 8-bit folder's cache stays as it is
