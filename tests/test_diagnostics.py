"""Representation diagnostics on constructed embeddings with known answers, and the
pictures that show them."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import create_dataset
from selfsup.eval import diagnostics as dg
from selfsup.models import create_backbone
from selfsup.output import plots


pytestmark = pytest.mark.usefixtures("one_thread")


def rng(seed=0):
    return np.random.default_rng(seed)


def random_rotation(d, seed=1):
    q, r = np.linalg.qr(rng(seed).standard_normal((d, d)))
    return q * np.sign(np.diag(r))  # Haar-distributed


# ----------------------------------------------------------------------------- compactness


def test_effective_rank_is_exactly_k_for_k_equal_singular_values():
    n, k, d = 500, 7, 40
    a = rng().standard_normal((n, k))
    q, _ = np.linalg.qr(a - a.mean(0))  # (n, k) orthonormal columns with zero mean
    v, _ = np.linalg.qr(rng(1).standard_normal((d, k)))  # (d, k) orthonormal
    z = 3.0 * q @ v.T + rng(2).standard_normal(d)  # rank k after centring, singular values all 3
    assert dg.effective_rank(z) == pytest.approx(k, abs=1e-6)
    assert dg.effective_rank(torch.from_numpy(z).float()) == pytest.approx(k, abs=1e-3)
    assert dg.effective_rank(np.ones((10, 5))) == 0.0


@pytest.mark.parametrize("k", [3, 10])
def test_effective_rank_of_a_random_rank_k_embedding_is_close_to_k(k):
    z = rng().standard_normal((2000, k)) @ rng(1).standard_normal((k, 64))
    erank = dg.effective_rank(z)
    assert 0.8 * k < erank <= k + 1e-9  # measured 2.97 (k=3) and 9.77 (k=10)


def test_dims_for_variance_on_a_known_spectrum():
    # principal axes with variances 50, 30, 10, 6, 4 (total 100), in a rotated basis
    n = 4000
    x = rng().standard_normal((n, 5))
    x = (x - x.mean(0)) / x.std(0)
    x, _ = np.linalg.qr(x)  # exactly uncorrelated, unit-norm columns
    z = x * np.sqrt([50.0, 30, 10, 6, 4]) @ random_rotation(5)
    assert dg.dims_for_variance(z, 0.5) == 1
    assert dg.dims_for_variance(z, 0.8) == 2
    assert dg.dims_for_variance(z, 0.85) == 3
    assert dg.dims_for_variance(z, 0.9) == 3
    assert dg.dims_for_variance(z, 0.95) == 4
    assert dg.dims_for_variance(z, 1.0) == 5
    with pytest.raises(ValueError, match="fraction"):
        dg.dims_for_variance(z, 0)


# ----------------------------------------------------------------------------- collapse


def test_collapsed_embeddings_are_flagged_and_gaussian_ones_are_not():
    point = rng().standard_normal(128)
    collapsed = point + 1e-4 * rng(1).standard_normal((512, 128))
    spread = dg.per_dim_std(collapsed)
    assert spread["z_std"] < 0.01 and spread["min"] < spread["mean"] < 1e-3
    assert dg.collapse_flag(collapsed)

    gaussian = rng(2).standard_normal((512, 128))
    spread = dg.per_dim_std(gaussian)
    assert spread["z_std"] == pytest.approx(1.0, abs=0.05)
    assert spread["mean"] == pytest.approx(1 / math.sqrt(128), rel=0.05)
    assert not dg.collapse_flag(gaussian)

    # dimensional collapse: spread out, but along one line only
    line = rng(3).standard_normal((512, 1)) * rng(4).standard_normal(128) + 5 * point
    assert dg.effective_rank(line) < 2 and dg.collapse_flag(line)


# ----------------------------------------------------------------------------- alignment and uniformity


def test_relative_alignment_ignores_collapse_and_spots_views_no_closer_than_others():
    z = rng(0).standard_normal((500, 16))
    views = z + 0.3 * rng(1).standard_normal(z.shape)
    spread = dg.relative_alignment(z, views)
    assert dg.relative_alignment(z, z) == 0.0
    assert 0.02 < spread < 0.2  # noise 0.3 against unit-variance samples
    centre = 10 * np.ones(16)  # the same geometry squeezed 1000x towards one direction
    assert dg.relative_alignment(centre + z / 100, centre + views / 100) == pytest.approx(spread, rel=0.05)
    assert dg.alignment(centre + z / 100, centre + views / 100) < dg.alignment(z, views) / 100  # plain alignment rewards it
    assert dg.relative_alignment(z, rng(2).standard_normal(z.shape)) == pytest.approx(1.0, abs=0.1)


def test_alignment():
    z = rng().standard_normal((100, 16))
    assert dg.alignment(z, z) == 0.0
    assert dg.alignment(z, 3 * z) == pytest.approx(0.0, abs=1e-12)  # normalised first
    assert dg.alignment(z, -z) == pytest.approx(4.0)  # antipodal pairs: ||2u||^2
    assert dg.alignment(z, -z, alpha=1) == pytest.approx(2.0)
    noisy = dg.alignment(z, z + 0.1 * rng(1).standard_normal(z.shape))
    assert 0 < noisy < dg.alignment(z, rng(2).standard_normal(z.shape))


def test_uniformity_is_zero_when_collapsed_and_lower_for_spread_points():
    collapsed = np.tile(rng().standard_normal(8), (300, 1))
    assert dg.uniformity(collapsed) == pytest.approx(0.0, abs=1e-12)
    sphere = rng(1).standard_normal((300, 8))
    u = dg.uniformity(sphere)
    # E exp(-2 ||x - y||^2) = E exp(-4 + 4 cos) for independent uniform points on S^7
    assert -4.0 < u < -1.0
    clustered = np.tile(rng(2).standard_normal(8), (300, 1)) + 0.3 * rng(3).standard_normal((300, 8))
    assert u < dg.uniformity(clustered) < 0
    # the subsampled estimate agrees with the all-pairs one
    assert dg.uniformity(sphere, max_pairs=20_000) == pytest.approx(u, abs=0.1)


# ----------------------------------------------------------------------------- factors


def factor_table(n=2000, k=6, seed=0):
    return rng(seed).uniform(0, 1, (n, k))


def test_dci_and_mig_are_high_for_a_disentangled_code_and_low_for_a_rotated_one():
    f = factor_table()
    code = f[:, rng(5).permutation(6)] * rng(6).uniform(0.5, 3, 6)  # permuted, scaled copy
    rotated = code @ random_rotation(6)
    good, bad = dg.dci(code, f), dg.dci(rotated, f)
    assert good["disentanglement"] > 0.95 and good["completeness"] > 0.95  # measured 1.00, 1.00
    assert bad["disentanglement"] < 0.4 and bad["completeness"] < 0.4  # measured 0.16, 0.17
    # a rotation keeps the information: only its arrangement suffers
    assert good["informativeness"] > 0.99 and bad["informativeness"] > 0.99
    assert good["per_factor"]["factor_0"]["metric"] == "r2"
    mig_good, mig_bad = dg.mig(code, f), dg.mig(rotated, f)
    assert mig_good["mig"] > 0.9 and mig_bad["mig"] < 0.3  # measured 0.96, 0.07
    assert set(mig_good["per_factor"]) == {f"factor_{k}" for k in range(6)}

    forest_good = dg.dci(code, f, predictor="forest")
    forest_bad = dg.dci(rotated, f, predictor="forest")
    assert forest_good["disentanglement"] > 0.9 and forest_bad["disentanglement"] < 0.5  # 1.00, 0.40


def test_dci_handles_categorical_and_periodic_factors_and_names_the_top_code():
    n = 2000
    r = rng(7)
    shape = r.integers(0, 4, n).astype(float)
    angle = r.uniform(0, 2 * math.pi, n)
    size = r.uniform(0, 1, n)
    factors = np.stack([shape, angle, size], 1)
    names = ["shape", "rotation", "size"]
    # code: one-hot shape (4 dims), the angle as a point on the circle (2), size (1), noise (1)
    code = np.concatenate([np.eye(4)[shape.astype(int)], np.cos(angle)[:, None],
                           np.sin(angle)[:, None], size[:, None], r.standard_normal((n, 1))], 1)
    out = dg.dci(code, factors, names)
    per = out["per_factor"]
    assert per["shape"]["kind"] == "categorical" and per["shape"]["metric"] == "accuracy"
    assert per["shape"]["informativeness"] == 1.0
    assert per["rotation"]["kind"].startswith("periodic")
    assert per["rotation"]["informativeness"] > 0.99  # linear in (cos, sin); not in the raw angle
    assert per["rotation"]["top_code"] in (4, 5) and per["size"]["top_code"] == 6
    assert out["disentanglement"] > 0.9
    # treated as a plain number the angle is not linearly decodable from (cos, sin)
    flat = dg.dci(code, factors, names, kinds={"rotation": "continuous"})
    assert flat["per_factor"]["rotation"]["informativeness"] < 0.9
    with pytest.raises(ValueError, match="kind must be"):
        dg.dci(code, factors, names, kinds={"size": "ordinal"})


def test_mutual_information_matches_sklearn():
    from sklearn.metrics import mutual_info_score

    r = rng(8)
    v = r.integers(0, 5, 700)
    z = np.stack([v * 2 + r.integers(0, 2, 700), r.integers(0, 7, 700), (v + r.integers(0, 3, 700)) % 5], 1)
    ours = dg.mutual_information(z, v)
    theirs = [mutual_info_score(z[:, d], v) for d in range(3)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_factor_kinds_know_shapes_and_guess_others():
    from selfsup.data.shapes import FACTOR_NAMES

    assert set(dg.FACTOR_KINDS) <= set(FACTOR_NAMES)  # no stale names
    f = np.stack([np.arange(100) % 3, np.linspace(0, 1, 100)], 1)
    assert dg.factor_kinds(f, ["a", "b"]) == ["categorical", "continuous"]
    assert dg.factor_kinds(f, ["texture_phase", "b"]) == [2 * math.pi, "continuous"]


# ----------------------------------------------------------------------------- encoders


def test_transfer_to_digits_gives_a_sensible_accuracy():
    torch.manual_seed(0)
    enc = create_backbone("small_cnn", in_chans=3, image_size=16, width=8)  # RGB 16 px: digits adapted
    torch.manual_seed(1)
    rand = create_backbone("small_cnn", in_chans=3, image_size=16, width=8)
    ds = create_dataset("digits", num_train=600)
    out = dg.transfer(enc, ds, random_encoder=rand)
    assert out["n_train"] == 600 and out["n_test"] == len(ds.test)
    for key in ("linear_top1", "random_init_linear_top1"):  # chance is 0.1
        assert 0.4 < out[key] <= 1.0  # measured 0.91 and 0.88 for these random CNNs


def test_inspect_bundles_everything_and_is_json_ready():
    torch.manual_seed(0)
    enc = create_backbone("small_cnn", in_chans=3, image_size=32, width=8)
    ds = create_dataset("shapes", num_train=50, num_test=400)
    out = dg.inspect(enc, ds, max_samples=300)
    json.dumps(out)  # JSON-ready
    assert out["split"] == "test" and out["n"] == 300 and out["dim"] == enc.num_features
    assert 1 <= out["effective_rank"] <= out["dim"]
    assert 1 <= out["dims_for_90pct_variance"] <= out["dim"]
    assert out["collapsed"] is False
    assert 0 < out["alignment"] < 4 and out["uniformity"] < 0
    assert set(out["dci"]["per_factor"]) == set(ds.test.factor_names)
    assert set(out["mig"]["per_factor"]) == set(ds.test.factor_names)
    assert 0 <= out["dci"]["disentanglement"] <= 1 and 0 <= out["mig"]["mig"] <= 1
    assert "transfer" not in out


# ----------------------------------------------------------------------------- pictures


def png(path):
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] > 50 and img.shape[1] > 50 and img.std() > 5  # a picture, not a blank
    return img


def test_pictures(tmp_path):
    images = (rng().random((6, 12, 12, 3)) * 255).astype(np.uint8)
    grey = images[..., :1]
    records = [{"step": s, "epoch": s / 10, "loss": 1 / s, "lr": 0.1, "z_std": 0.5,
                "collapse_suspected": s > 15} for s in range(1, 21)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    png(plots.training_curves(path, tmp_path / "curves.png"))
    png(plots.training_curves(records, tmp_path / "curves2.png"))
    with pytest.raises(ValueError, match="no metric records"):
        plots.training_curves([], tmp_path / "empty.png")

    xy = rng(1).standard_normal((100, 2))
    factors = np.stack([np.arange(100) % 4, rng(2).uniform(0, 2 * math.pi, 100), rng(3).random(100)], 1)
    png(plots.factor_maps(xy, factors, ["texture_kind", "rotation", "scale"], tmp_path / "f.png"))

    png(plots.retrieval_grid(images[:3], np.stack([images[3:]] * 3), tmp_path / "r.png"))
    png(plots.retrieval_grid(grey[:3], np.stack([grey[3:]] * 3), tmp_path / "rg.png", title="grey"))
    with pytest.raises(ValueError, match="neighbours must be"):
        plots.retrieval_grid(images[:3], images[3:5, None], tmp_path / "bad.png")
    png(plots.image_grid([images, grey[:4], images.astype(np.float32) / 255], ["a", "b", "c"],
                         tmp_path / "g.png"))
    png(plots.attention_overlay(images, rng(4).random((6, 3, 3)), tmp_path / "a.png"))


def test_upsampled_attention_keeps_where_the_peak_is():
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 3] = 1.0  # top right patch
    up = plots.upsample_maps(maps, (32, 32))[0]
    assert up.shape == (32, 32) and up.min() == 0.0 and up.max() == pytest.approx(1.0)
    assert up[:8, 24:].mean() > 0.5 > up[16:, :16].mean()


def test_umap_projection_needs_umap_learn():
    feats = rng().standard_normal((40, 8))
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="umap-learn"):
            plots.project_2d(feats, "umap")
    else:
        assert plots.project_2d(feats, "umap").shape == (40, 2)
    with pytest.raises(ValueError, match="pca, tsne or umap"):
        plots.project_2d(feats, "mds")
