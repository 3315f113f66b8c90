"""Choosing which samples to label (selfsup.eval.selection, selfsup select) and label
propagation (selfsup.eval.propagation): each strategy against a brute-force reference on
toy pools, the command end to end on an image folder and on text, and its one-line errors."""
from __future__ import annotations

import csv
import itertools
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup
from selfsup.cli import main
from selfsup.eval import selection
from selfsup.eval.propagation import propagate_labels, propagation_accuracy
from selfsup.eval.selection import SELECTIONS, covering_radius, kmeans, select_samples, typicality
from selfsup.models import create_backbone


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def blobs(sizes, dim=8, spread=0.15, seed=0):
    """Well-separated clusters: cluster i around the i-th axis, ``sizes[i]`` points each."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.eye(len(sizes), dim)[i] + spread * rng.normal(size=(n, dim)) for i, n in enumerate(sizes)])
    return x.astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_typicality(x, members, neighbours=20):
    """1 / (1e-5 + mean distance to the min(20, n // 2) nearest other members), for each member."""
    k = min(neighbours, len(members) // 2)
    pts = unit(x)[members].astype(np.float64)
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return 1.0 / (1e-5 + np.sort(d, axis=1)[:, :k].mean(1))


# ----------------------------------------------------------------------------- TypiClust


def test_typiclust_picks_the_most_typical_point_of_each_cluster_largest_first():
    sizes = [30, 45, 12, 60, 25]
    x, truth = blobs(sizes)
    res = select_samples("typiclust", x, len(sizes), seed=0)
    assert sorted(truth[res.indices]) == list(range(len(sizes)))  # one per cluster
    assert list(truth[res.indices]) == list(np.argsort(sizes)[::-1])  # the largest cluster first
    for i, c in zip(res.indices, truth[res.indices]):
        members = np.flatnonzero(truth == c)
        typ = brute_typicality(x, members)
        assert i == members[np.argmax(typ)]
        assert res.score[list(res.indices).index(i)] == pytest.approx(typ.max(), rel=1e-4)
    assert len(set(res.cluster)) == len(sizes)


def test_typiclust_second_round_goes_around_the_labelled_points():
    x, truth = blobs([30, 30, 30, 30])
    first = select_samples("typiclust", x, 2, seed=0)
    second = select_samples("typiclust", x, 2, labelled=first.indices, seed=0)
    assert not set(second.indices) & set(first.indices)
    assert set(truth[second.indices]) == set(range(4)) - set(truth[first.indices])  # the clusters still uncovered


def test_typicality_of_a_large_cluster_is_exact_on_its_shortlist():
    x, _ = blobs([400], dim=6, spread=0.5)
    members = np.arange(400)
    rows, typ = typicality(selection.Pool(x), members, members, exact_limit=100, sample=150, shortlist=30)
    assert len(rows) == 30
    np.testing.assert_allclose(typ, brute_typicality(x, members)[rows], rtol=1e-4)


def test_kmeans_lloyd_and_minibatch_recover_separated_clusters():
    x, truth = blobs([50, 70, 40])
    for minibatch_above in (10**6, 50):
        km = kmeans(x, 3, seed=1, minibatch_above=minibatch_above, batch_size=32)
        assert km.minibatch == (minibatch_above == 50)
        pairs = set(zip(truth, km.assign))
        assert len(pairs) == 3, pairs  # each true cluster is one k-means cluster


# ----------------------------------------------------------------------------- ProbCover


def test_probcover_covers_every_point_within_delta_when_the_budget_allows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    delta = 0.6
    res = select_samples("probcover", x, 40, seed=0, delta=delta)
    u = unit(x)
    dist = np.sqrt(((u[:, None] - u[None, res.indices]) ** 2).sum(-1))  # (60, 40)
    assert (dist.min(1) < delta).all()
    assert res.info["coverage"] == 1.0
    assert res.score.sum() == len(x)  # each point is newly covered exactly once
    ball = (np.sqrt(((u[:, None] - u[None]) ** 2).sum(-1)) < delta).sum(1)
    assert res.score[0] == ball.max() and ball[res.indices[0]] == ball.max()  # greedy: the largest ball first


def test_probcover_delta_from_purity_covers_separated_clusters():
    x, truth = blobs([30, 40, 25, 35])
    res = select_samples("probcover", x, 4, seed=0)
    assert 0 < res.info["delta"] < 2 and res.info["pseudo_classes"] == 4
    assert sorted(truth[res.indices]) == [0, 1, 2, 3]
    assert res.info["coverage"] > 0.9


# ----------------------------------------------------------------------------- k-center


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kcenter_radius_is_within_twice_the_optimum(seed):
    x = np.random.default_rng(seed).normal(size=(14, 3)).astype(np.float32)
    budget = 3
    res = select_samples("kcenter", x, budget, seed=seed)
    radius = covering_radius(x, res.indices)
    assert radius == pytest.approx(res.info["radius"], rel=1e-5)
    optimum = min(covering_radius(x, np.array(c)) for c in itertools.combinations(range(len(x)), budget))
    assert radius <= 2 * optimum + 1e-6


def test_kcenter_never_picks_a_labelled_point_and_starts_from_them():
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    res = select_samples("kcenter", x, 5, labelled=[0, 1, 2])
    assert not {0, 1, 2} & set(res.indices)
    assert res.info["radius_before"] >= res.score[0] - 1e-6
    assert np.all(np.diff(res.score) <= 1e-6)  # each pick is no farther than the one before


# ----------------------------------------------------------------------------- every strategy


@pytest.mark.parametrize("strategy", SELECTIONS.names())
def test_every_strategy_reads_a_memmap_in_chunks_like_an_array(strategy, tmp_path, monkeypatch):
    x, _ = blobs([20, 25, 15], dim=5, spread=0.3)
    want = select_samples(strategy, x, 6, labelled=[3, 30], seed=4)
    np.save(tmp_path / "f.npy", x)
    monkeypatch.setattr(selection, "CHUNK", 7)
    got = select_samples(strategy, np.load(tmp_path / "f.npy", mmap_mode="r"), 6, labelled=[3, 30], seed=4)
    np.testing.assert_array_equal(got.indices, want.indices)
    assert not {3, 30} & set(got.indices) and len(set(got.indices)) == 6


@pytest.mark.parametrize("strategy", SELECTIONS.names())
def test_selection_is_blind_to_labels(strategy, tmp_path):
    """The same picks whether the pool comes with its labels or without them."""
    rng = np.random.default_rng(0)
    images = (rng.random((40, 12, 12, 3)) * 255).astype(np.uint8)
    labels = rng.integers(0, 3, 40)
    enc = tiny_encoder()
    with_labels = selfsup.select(enc, (images, labels), 5, strategy=strategy, progress=False)
    without = selfsup.select(enc, images, 5, strategy=strategy, progress=False)
    assert with_labels.ids == without.ids and len(set(without.ids)) == 5


def test_a_pool_larger_than_the_memory_allowance_is_embedded_to_disk(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = (rng.random((30, 12, 12, 3)) * 255).astype(np.uint8)
    enc = tiny_encoder()
    want = selfsup.select(enc, images, 4, progress=False)
    monkeypatch.setattr(selfsup.api, "SELECT_IN_MEMORY", 0)
    got = selfsup.select(enc, images, 4, progress=False, out_dir=tmp_path / "out", projection="pca")
    assert got.ids == want.ids
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "selection.csv", "selection.json", "selection.png", "selection_map.png"]  # the features file is gone


# ----------------------------------------------------------------------------- label propagation


def test_label_propagation_recovers_two_separated_clusters_from_one_label_each():
    x, truth = blobs([40, 40], dim=6, spread=0.2, seed=3)
    labels = np.full(80, -1)
    labels[[5, 60]] = truth[[5, 60]]
    pred, scores = propagate_labels(torch.from_numpy(x), torch.from_numpy(labels), k=10)
    assert torch.equal(pred, torch.from_numpy(truth))
    assert scores.shape == (80, 2)
    test, test_truth = blobs([10, 10], dim=6, spread=0.2, seed=4)
    for transductive in (True, False):
        acc = propagation_accuracy(torch.from_numpy(x), torch.from_numpy(labels), torch.from_numpy(test),
                                   torch.from_numpy(test_truth), k=10, transductive=transductive)
        assert acc == 1.0


# ----------------------------------------------------------------------------- the command


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and "%|" not in line]  # progress bars aside
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def tiny_encoder():
    torch.manual_seed(0)
    return create_backbone("small_cnn", in_chans=3, image_size=12, width=4).eval()


@pytest.fixture
def image_pool(tmp_path):
    """A folder of 3 colour classes x 8 images and a tiny exported encoder."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(8):
            pixels = np.array(colour) * rng.uniform(0.5, 1.0) + rng.normal(0, 25, (12, 12, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / f"c{c}" / f"img{i}.png")
    return selfsup.export_encoder(tiny_encoder(), tmp_path / "enc.safetensors"), root


def read_table(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_select_on_a_folder_writes_the_table_sheet_and_map_and_a_second_round_avoids_the_labelled(
        capsys, tmp_path, image_pool):
    enc, root = image_pool
    files = {p.relative_to(root).as_posix() for p in root.rglob("*.png")}
    code, out, err = run_cli(capsys, "select", enc, "--data", f"folder:{root}", "--budget", 4, "--out",
                             tmp_path / "r1")
    assert code == 0, err
    rows = read_table(tmp_path / "r1" / "selection.csv")
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"] and {r["id"] for r in rows} <= files
    assert all(r["cluster"] != "" and float(r["score"]) > 0 for r in rows)
    for name in ("selection.png", "selection_map.png"):
        assert Image.open(tmp_path / "r1" / name).size[0] > 100
    info = json.loads((tmp_path / "r1" / "selection.json").read_text())
    assert info["strategy"] == "typiclust" and info["budget"] == 4 and info["ids"] == [r["id"] for r in rows]
    # a second round from the first's table, then a third from a plain list of both
    code, _, err = run_cli(capsys, "select", enc, "--data", f"folder:{root}", "--budget", 5, "--labelled",
                           tmp_path / "r1" / "selection.csv", "--out", tmp_path / "r2", "--strategy", "kcenter")
    assert code == 0, err
    second = [r["id"] for r in read_table(tmp_path / "r2" / "selection.csv")]
    assert len(second) == 5 and not set(second) & {r["id"] for r in rows}
    done = tmp_path / "labelled.txt"
    done.write_text("\n".join([r["id"] for r in rows] + second) + "\n")
    code, _, err = run_cli(capsys, "select", enc, "--data", f"folder:{root}", "--budget", 15, "--labelled", done,
                           "--out", tmp_path / "r3", "--strategy", "probcover")
    assert code == 0, err
    third = [r["id"] for r in read_table(tmp_path / "r3" / "selection.csv")]
    assert set(third) == files - set(second) - {r["id"] for r in rows}  # all that was left
    # the same --out again is refused, then replaced with --overwrite
    code, _, err = run_cli(capsys, "select", enc, "--data", f"folder:{root}", "--budget", 2, "--out", tmp_path / "r1")
    assert_one_line_error(code, err, "already holds selection.csv", "--overwrite")
    code, _, err = run_cli(capsys, "select", enc, "--data", f"folder:{root}", "--budget", 2, "--out", tmp_path / "r1",
                           "--overwrite", "--strategy", "random")
    assert code == 0, err
    assert len(read_table(tmp_path / "r1" / "selection.csv")) == 2


def test_select_works_for_text(capsys, tmp_path):
    from selfsup.data.tokenizer import Tokenizer

    topics = ["the cat sat on the mat", "stocks fell sharply today", "the team won the final match"]
    lines = [f"{topics[i % 3]} {w}" for i, w in enumerate(["again", "now", "too", "then", "here", "there"] * 4)]
    (tmp_path / "pool.txt").write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    enc = create_backbone("bert", tokenizer=Tokenizer.train(lines, vocab_size=64), layers=1, hidden=32, heads=2,
                          max_length=32)
    selfsup.export_encoder(enc, tmp_path / "hf")
    code, out, err = run_cli(capsys, "select", tmp_path / "hf", "--data", f"text:{tmp_path / 'pool.txt'}",
                             "--budget", 3, "--out", tmp_path / "sel")
    assert code == 0, err
    rows = read_table(tmp_path / "sel" / "selection.csv")
    assert len(rows) == 3 and all(r["text"] in lines for r in rows)
    listing = (tmp_path / "sel" / "selection.md").read_text()
    assert all(r["text"] in listing for r in rows)
    assert (tmp_path / "sel" / "selection_map.png").is_file() and not (tmp_path / "sel" / "selection.png").exists()


@pytest.mark.parametrize("args,needles", [
    (["--budget", "0"], ["--budget must be a whole number of samples, at least 1, got 0"]),
    (["--budget", "-3"], ["at least 1, got -3"]),
    (["--budget", "25"], ["--budget 25 is more than the 24 unlabelled samples", "at most 24"]),
    (["--budget", "2", "--strategy", "typiclus"], ["unknown selection strategy 'typiclus'",
                                                    "did you mean 'typiclust'?"]),
    (["--budget", "2", "--set", "neighbors=5"], ["has no option 'neighbors'", "did you mean neighbours?"]),
    (["--budget", "2", "--set", "neighbours=0"], ["typiclust's neighbours must be at least 1, got 0"]),
    (["--budget", "2", "--strategy", "probcover", "--set", "delta=-1"], ["delta must be positive"]),
    (["--budget", "2", "--labelled", "LABELLED"], ["1 of its 2 ids are not in the pool", "'c9/nope.png'"]),
    (["--budget", "2", "--labelled", "MISSING"], ["no such file"]),
])
def test_bad_inputs_are_one_line_errors(capsys, tmp_path, image_pool, args, needles):
    enc, root = image_pool
    (tmp_path / "labelled.txt").write_text("c0/img1.png\nc9/nope.png\n")
    args = [{"LABELLED": tmp_path / "labelled.txt", "MISSING": tmp_path / "nope.txt"}.get(a, a) for a in args]
    code, _, err = run_cli(capsys, "select", enc, "--data", f"folder:{root}", "--out", tmp_path / "out", *args)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "out" / "selection.csv").exists()


def test_select_samples_rejects_bad_budgets_and_labelled_rows():
    x = np.random.default_rng(0).normal(size=(10, 4))
    with pytest.raises(selfsup.errors.SelfSupError, match="at most 8"):
        select_samples("random", x, 9, labelled=[0, 1])
    with pytest.raises(selfsup.errors.SelfSupError, match="outside the pool"):
        select_samples("random", x, 2, labelled=[10])
    with pytest.raises(selfsup.errors.SelfSupError, match="NaN"):
        select_samples("kcenter", np.full((4, 2), np.nan), 1)


# ----------------------------------------------------------------------------- the label-efficiency study


@pytest.fixture(scope="module")
def digits_data():
    from selfsup.data import create_dataset

    return create_dataset("digits")


def test_the_study_compares_label_blind_selections_and_recommends_by_cross_validation(digits_data):
    from selfsup.eval.label_efficiency import StudyConfig, format_table, run_study
    from selfsup.eval.features import extract_features

    torch.manual_seed(0)
    enc = create_backbone("small_cnn", in_chans=digits_data.spec.channels, image_size=8, width=8).eval()
    cfg = StudyConfig(budgets=(20,), selection=("stratified", "random", "typiclust"), seeds=2,
                      protocols=("knn", "linear", "propagation"), cv_folds=3)
    result = run_study(enc, digits_data, cfg, log=lambda s: None)
    rows = result["rows"]
    assert [(r["selection"], r["seed"]) for r in rows] == [(s, i) for s in cfg.selection for i in range(2)]
    feats = extract_features(enc, digits_data.train)
    for r in rows:
        assert set(r["cv"]) == set(cfg.protocols) and r["recommended"] == r[r["recommended_protocol"]]
        if r["selection"] == "stratified":
            assert "indices" not in r and r["classes_seen"] == 10
        else:  # exactly the strategy's picks from the features alone, i.e. blind to the labels
            assert r["labels"] == 20 and r["indices"] == sorted(select_samples(
                r["selection"], feats, 20, seed=r["seed"]).indices.tolist())
    random_draws = [r["indices"] for r in rows if r["selection"] == "random"]
    assert random_draws[0] != random_draws[1]  # the seed is the draw
    assert [(s["selection"], s["n_seeds"]) for s in result["summary"]] == [(s, 2) for s in cfg.selection]
    table = format_table(result["summary"], result["protocols"])
    assert "| typiclust |" in table and "recommended (CV)" in table


def test_the_recommendation_is_scratch_when_the_pretrained_features_are_useless(digits_data):
    """An encoder whose weights are all zero gives every image the same features: the probe is
    at chance, the same backbone trained from scratch is not, and cross-validation on the
    chosen labels alone -- the test split unseen -- must say so."""
    from selfsup.eval.finetune import ClassifierConfig
    from selfsup.eval.label_efficiency import StudyConfig, run_study

    enc = create_backbone("small_cnn", in_chans=digits_data.spec.channels, image_size=8, width=8).eval()
    with torch.no_grad():
        for p in enc.parameters():
            p.zero_()
    cfg = StudyConfig(per_class=(10,), seeds=1, protocols=("linear", "scratch"), cv_folds=3,
                      classifier=ClassifierConfig(steps=150))
    row = run_study(enc, digits_data, cfg, log=lambda s: None)["rows"][0]
    assert row["linear"] < 0.2 and row["scratch"] > 0.4, row
    assert row["recommended_protocol"] == "scratch" and row["cv"]["scratch"] > row["cv"]["linear"] + 0.2, row


def test_label_efficiency_cli_takes_budgets_and_selections(capsys, tmp_path, image_pool):
    enc, root = image_pool
    code, out, err = run_cli(capsys, "label-efficiency", enc, "--data", f"folder:{root}", "--budgets", "6",
                             "--selection", "random", "kcenter", "--seeds", "2", "--protocols", "knn",
                             "propagation", "--out", tmp_path / "le")
    assert code == 0, err
    result = json.loads((tmp_path / "le" / "label_efficiency.json").read_text())
    assert [s["selection"] for s in result["summary"]] == ["random", "kcenter"]
    assert all(r["labels"] == 6 and len(r["indices"]) == 6 for r in result["rows"])
    assert "| kcenter |" in out and (tmp_path / "le" / "label_efficiency.png").is_file()
    code, out, err = run_cli(capsys, "label-efficiency", enc, "--data", f"folder:{root}", "--budgets", "6",
                             "--selection", "typiclsut", "--out", tmp_path / "le2")
    assert_one_line_error(code, err, "typiclsut", "typiclust")
