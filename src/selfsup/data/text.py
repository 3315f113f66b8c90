"""Text: sources of sentences, tokenised once into a :class:`TextSet`.

The text data path::

    text:PATH (.txt / .jsonl / .csv, a folder of them, train/test files or folders),
    hf:PATH with a text column, lang (generated), pydoc (Python's own documentation)
      -> RawText: the strings, labels, ids and factors of one split
      -> a Tokenizer (:mod:`selfsup.data.tokenizer`): WordPiece trained on the *training*
         split, or a local folder (--tokenizer, --init)
      -> TextSet: token ids (N, max_length) int32, right-padded, read by index like images

Reading rules: a ``.txt`` file is one sample per non-empty line (``unit="file"``: one
per file); ``.jsonl`` / ``.csv`` rows give their ``text_column`` and, when present, their
``label_column``; a folder takes every such file under it, and a file's sub-folder (under
``train/`` and ``test/`` when those exist) names its class.  Files that are binary or not
UTF-8 are skipped and counted in one warning (an error with ``strict``), and so are files
that cannot be read: not regular files (a FIFO, a device: never opened), dangling links,
link loops.  A sample longer than ``max_length`` tokens is truncated and counted, never an
error; a CSV cell may be as long as its file.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.data import (DATASETS, Dataset, SampleSet, SampleSpec, check_path, default_cache_dir, open_regular,
                          walk_files)
from selfsup.data.tokenizer import Tokenizer
from selfsup.errors import SelfSupError
from selfsup.files import atomic_write_text

SUFFIXES = (".txt", ".jsonl", ".csv")


@dataclass
class TextOptions:
    tokenizer: Any = None              # a Tokenizer, a local tokenizer folder, or None = train WordPiece on the train split
    max_length: int = 128              # tokens per sample, [CLS] and [SEP] included; longer samples are truncated
    vocab_size: int = 8192             # WordPiece vocabulary when training one (a small corpus gives fewer)
    text_column: str = "text"          # .jsonl / .csv / hf: the column holding the text
    label_column: str = "label"        # ... and the optional label column
    unit: str = "line"                 # .txt: "line" (one sample per line) or "file" (one per file)


@dataclass
class RawText:
    """One split's strings before tokenisation."""

    texts: list[str]
    labels: np.ndarray  # (N,) int64, -1 where unknown
    ids: np.ndarray  # (N,) str
    classes: list[str]
    factors: np.ndarray | None = None
    factor_names: list[str] = field(default_factory=list)


@dataclass
class TextSet(SampleSet):
    """One split of tokenised text: ``tokens`` (N, L) int32 right-padded with the
    tokenizer's pad id, the raw ``texts`` kept for baselines and pictures."""

    tokens: np.ndarray  # (N, L) int32
    texts: np.ndarray  # (N,) object (str)
    labels: np.ndarray  # (N,) int64, -1 where unknown
    ids: Any  # (N,) str
    classes: list[str]
    tokenizer: Tokenizer
    factors: np.ndarray | None = None  # (N, F) float32
    factor_names: list[str] = field(default_factory=list)
    row_fields = ("tokens", "texts")

    def __post_init__(self):
        if self.tokens.ndim != 2 or not np.issubdtype(self.tokens.dtype, np.integer):
            raise ValueError(f"tokens must be (N, L) integers, got {self.tokens.shape} {self.tokens.dtype}")
        self._check_lengths()

    @property
    def spec(self) -> SampleSpec:
        return SampleSpec("text", vocab_size=self.tokenizer.vocab_size, seq_len=int(self.tokens.shape[1]),
                          classes=tuple(self.classes), factor_names=tuple(self.factor_names))


def text_dataset(name: str, train: RawText, test: RawText | None, options: TextOptions | None = None, *,
                 seed: int = 0, num_train: int | None = None, num_test: int | None = None,
                 test_origin: str = "source", cache_dir: str | Path | None = None) -> Dataset:
    """Tokenise the splits (with a tokenizer trained on ``train`` unless ``options`` give
    one, see :func:`trained_tokenizer`)."""
    opt = options or TextOptions()
    train = _subsample(train, num_train, seed)
    if not train.texts:
        raise SelfSupError(f"{name}: no text to train on")
    test = _subsample(test, num_test, seed) if test is not None and test.texts else None
    tok = opt.tokenizer
    if tok is None:
        tok = trained_tokenizer(train.texts, opt.vocab_size, cache_dir)
    elif not isinstance(tok, Tokenizer):
        tok = Tokenizer.load(tok)
    splits, truncated, total = {}, 0, 0
    for key, raw in (("train", train), ("test", test)):
        if raw is None:
            continue
        tokens, cut = tok.encode(raw.texts, opt.max_length)
        truncated, total = truncated + cut, total + len(raw.texts)
        splits[key] = TextSet(tokens=tokens, texts=np.array(raw.texts, dtype=object), labels=raw.labels,
                              ids=raw.ids, classes=list(raw.classes), tokenizer=tok, factors=raw.factors,
                              factor_names=list(raw.factor_names))
    if truncated:
        warnings.warn(f"{name}: {truncated} of {total} samples are longer than {opt.max_length} tokens and were "
                      f"truncated (raise data.max_length to keep more)", stacklevel=2)
    return Dataset(name=name, train=splits["train"], test=splits.get("test"), test_origin=test_origin)


def trained_tokenizer(texts: list[str], vocab_size: int, cache_dir: str | Path | None = None) -> Tokenizer:
    """A WordPiece tokenizer trained on ``texts``, cached by their content.

    Hugging Face's trainer breaks ties between equally frequent merges in hash-map order,
    so two trainings on the same texts can differ; the cache (``tokenizers/`` in the
    cache folder) makes the same texts give the same tokenizer on this machine, so runs
    and their reruns agree.  A run saves its tokenizer, so its own results never depend
    on the cache."""
    digest = hashlib.sha256(f"{vocab_size}\n".encode())
    for t in texts:
        digest.update(t.encode("utf-8", "surrogatepass") + b"\0")
    file = Path(cache_dir or default_cache_dir()) / "tokenizers" / f"wordpiece-{digest.hexdigest()[:20]}.json"
    if file.is_file():
        try:
            return Tokenizer.from_json(file.read_text())
        except (OSError, ValueError, KeyError, SelfSupError) as err:
            warnings.warn(f"cached tokenizer {file} is unreadable ({err}); training a new one", stacklevel=2)
    tok = Tokenizer.train(texts, vocab_size)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(file, tok.to_json())
    except OSError as err:
        warnings.warn(f"could not cache the tokenizer in {file} ({err})", stacklevel=2)
    return tok


def _subsample(raw: RawText | None, n: int | None, seed: int) -> RawText | None:
    if raw is None or n is None or n >= len(raw.texts):
        return raw
    idx = np.sort(np.random.default_rng(seed).choice(len(raw.texts), size=n, replace=False))
    return RawText([raw.texts[i] for i in idx], raw.labels[idx], raw.ids[idx], raw.classes,
                   None if raw.factors is None else raw.factors[idx], raw.factor_names)


def labelled(texts: list[str], labels: list[Any], ids: list[str]) -> RawText:
    """A RawText whose labels (strings or numbers, None where missing) become class indices."""
    known = sorted({v for v in labels if v is not None}, key=lambda v: (isinstance(v, str), v))
    classes = [str(v) for v in known]
    index = {v: i for i, v in enumerate(known)}
    y = np.array([index[v] if v is not None else -1 for v in labels], dtype=np.int64)
    if len(known) and (y < 0).any():
        warnings.warn(f"{int((y < 0).sum())} samples have no label; they count as unlabeled", stacklevel=2)
    return RawText(list(texts), y, np.array(ids, dtype=object), classes)


# ----------------------------------------------------------------------------------------
# text:PATH


class Unreadable(Exception):
    """A file that is binary, not UTF-8, or cannot be read (not a regular file, a broken link)."""


def _decode(path: Path) -> str:
    try:
        with open_regular(path) as fh:  # a FIFO or device is refused, not read
            data = fh.read()
    except OSError as err:
        raise Unreadable(f"unreadable: {err.strerror or err}") from None
    if b"\x00" in data[:8192]:
        raise Unreadable("binary (NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise Unreadable(f"not UTF-8 (byte {err.start})") from None


def _rows(path: Path, opt: TextOptions) -> list[tuple[str, Any]]:
    """(text, label or None) of every sample in one file."""
    text = _decode(path)
    if path.suffix == ".txt":
        if opt.unit == "file":
            return [(text.strip(), None)] if text.strip() else []
        return [(line.strip(), None) for line in text.splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON may hold U+2028 unescaped
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise SelfSupError(f"{path}: line {n} is not valid JSON") from None
            if not isinstance(records[-1], dict):
                raise SelfSupError(f"{path}: line {n} is not a JSON object")
        columns = list(dict.fromkeys(k for r in records for k in r))
    else:
        records, columns = _read_csv(path, text)
    if records and opt.text_column not in columns:
        raise SelfSupError(f"{path} has no column {opt.text_column!r} (columns: {', '.join(map(str, columns))}); "
                           f"name the text column with --text-column")
    label = opt.label_column if opt.label_column in columns else None
    return [(str(r.get(opt.text_column) or "").strip(), _label(r.get(label)) if label else None)
            for r in records if str(r.get(opt.text_column) or "").strip()]


CSV_FIELD_MAX = 2**31 - 1  # the most csv.field_size_limit takes on every platform (a C long)


def _read_csv(path: Path, text: str) -> tuple[list[dict], list[str]]:
    """The rows and column names of a CSV file's ``text``.  A cell may be as long as the
    file (which is already in memory): the csv module's own limit (128 Ki characters) is
    raised for this read and restored after -- it is process-wide."""
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, min(len(text) + 1, CSV_FIELD_MAX)))
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))  # quoted fields may span lines
        try:
            return list(reader), list(reader.fieldnames or [])
        except csv.Error as err:
            raise SelfSupError(f"{path}: line {reader.reader.line_num} is not valid CSV ({err})") from None
    finally:
        csv.field_size_limit(limit)


def _label(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)  # a list or dict label: its JSON text names the class


def _files(root: Path) -> list[Path]:
    return walk_files(root, lambda name: not name.startswith(".") and name.endswith(SUFFIXES))


def _read_split(root: Path, opt: TextOptions, strict: bool) -> RawText:
    """Every sample of a file or folder; a file's sub-folder under ``root`` is its class."""
    files = [root] if root.is_file() else _files(root)
    texts, labels, ids, skipped = [], [], [], []
    for f in files:
        try:
            rows = _rows(f, opt)
        except Unreadable as why:
            if strict:
                raise SelfSupError(f"{f} is {why}; remove it or drop --strict to skip such files") from None
            skipped.append(f"{f} ({why})")
            continue
        folder_class = f.parent.relative_to(root).parts[0] if root.is_dir() and f.parent != root else None
        name = f.relative_to(root) if root.is_dir() else f.name
        for i, (text, label) in enumerate(rows):
            texts.append(text)
            labels.append(label if label is not None else folder_class)
            ids.append(f"{name}:{i}")
    if skipped:
        if not texts:
            raise SelfSupError(f"no readable text in {root}: {len(skipped)} file(s) skipped, first {skipped[0]}")
        warnings.warn(f"skipped {len(skipped)} unreadable file(s) under {root} (first: {skipped[0]}); "
                      "--strict makes this an error", stacklevel=2)
    if not texts:
        raise SelfSupError(f"no text in {root}: " + ("the file is empty" if root.is_file() else
                                                     f"no non-empty {'/'.join(SUFFIXES)} files under it"))
    return labelled(texts, labels, ids)


def _split_paths(root: Path) -> tuple[Path, Path | None]:
    """``train``/``test`` files or folders inside ``root`` when it has them, else root alone."""
    if root.is_dir():
        for suffix in ("",) + SUFFIXES:
            train, test = root / f"train{suffix}", root / f"test{suffix}"
            if train.exists():
                return train, test if test.exists() else None
    return root, None


@DATASETS.register("text", modality="text", help="text files: text:FILE.txt|.jsonl|.csv or a folder of them (train/test splits, "
                                "class sub-folders)")
def build_text(path: str | None = None, *, strict: bool = False, seed: int = 0, num_train: int | None = None,
               num_test: int | None = None, text: TextOptions | None = None, cache_dir: str | Path | None = None,
               **_ignored) -> Dataset:
    check_path("text", path, required=True)
    opt = text or TextOptions()
    if opt.unit not in ("line", "file"):
        raise SelfSupError(f"data.text_unit must be line or file, got {opt.unit!r}")
    root = Path(path).expanduser()
    if not root.exists():
        raise SelfSupError(f"text:{path}: no such file or folder")
    if root.is_file() and root.suffix not in SUFFIXES:
        raise SelfSupError(f"text:{path}: not a {', '.join(SUFFIXES)} file")
    train_path, test_path = _split_paths(root)
    train = _read_split(train_path, opt, strict)
    test = _read_split(test_path, opt, strict) if test_path is not None else None
    if test is not None and train.classes != test.classes and test.classes:
        test = relabel(test, train.classes, f"text:{path}")
    return text_dataset(f"text:{path}", train, test, opt, seed=seed, num_train=num_train, num_test=num_test,
                        cache_dir=cache_dir)


def relabel(test: RawText, classes: list[str], name: str) -> RawText:
    """The test split's labels in the train split's class order."""
    unknown = sorted(set(test.classes) - set(classes))
    if unknown:
        raise SelfSupError(f"{name}: the test split has classes the train split lacks: {', '.join(unknown[:5])}")
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[test.classes[v]] if v >= 0 else -1 for v in test.labels], dtype=np.int64)
    return RawText(test.texts, y, test.ids, list(classes))


# ----------------------------------------------------------------------------------------
# pydoc: real English that ships with Python

PASSAGE_WORDS = 64  # passages of the pydoc corpus hold at most this many words


def pydoc_passages(max_words: int = PASSAGE_WORDS) -> tuple[list[str], list[str]]:
    """The paragraphs of Python's own documentation topics (``pydoc_data.topics``),
    long ones cut into pieces of at most ``max_words`` words; returns (texts, ids)."""
    from pydoc_data.topics import topics

    texts, ids = [], []
    for key in sorted(topics):
        for p, para in enumerate(topics[key].split("\n\n")):
            words = para.split()
            if len(words) < 6:
                continue
            for s in range(0, len(words), max_words):
                texts.append(" ".join(words[s:s + max_words]))
                ids.append(f"{key}/{p}/{s // max_words}")
    return texts, ids


@DATASETS.register("pydoc", modality="text", help="passages of Python's built-in documentation (pydoc_data), unlabeled English")
def build_pydoc(path: str | None = None, *, seed: int = 0, num_train: int | None = None,
                num_test: int | None = None, text: TextOptions | None = None, cache_dir: str | Path | None = None,
                **_ignored) -> Dataset:
    check_path("pydoc", path, required=False)
    texts, ids = pydoc_passages()
    held = np.arange(len(texts)) % 10 == 9  # every tenth passage is the test split
    none = np.full(len(texts), -1, dtype=np.int64)

    def split(mask: np.ndarray) -> RawText:
        return RawText([t for t, m in zip(texts, mask) if m], none[mask], np.array(ids, dtype=object)[mask], [])

    return text_dataset("pydoc", split(~held), split(held), text, seed=seed, num_train=num_train,
                        num_test=num_test, test_origin="every tenth passage", cache_dir=cache_dir)
