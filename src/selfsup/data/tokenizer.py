"""Tokenizers: Hugging Face ``tokenizers`` behind one small wrapper.

A run either trains a WordPiece tokenizer (Wu et al. 2016, arXiv 1609.08144, the
tokenizer BERT uses) on its training texts (BERT's normaliser and pre-tokeniser,
``[CLS] text [SEP]`` around every sample) or loads one from a local
folder (``tokenizer.json``, or whatever ``transformers.AutoTokenizer`` reads offline).
The wrapper knows the special tokens, so masking and padding never need to guess, and
serialises to one JSON string that travels inside checkpoints and exported encoders.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from selfsup.errors import SelfSupError

SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
MIN_VOCAB = 64  # a WordPiece vocabulary needs room for the characters of the corpus


class Tokenizer:
    """A ``tokenizers.Tokenizer`` and the names of its special tokens."""

    def __init__(self, backend, specials: dict[str, str]):
        self.backend, self.specials = backend, dict(specials)
        self.backend.no_padding()
        self.backend.no_truncation()
        ids = {role: backend.token_to_id(tok) for role, tok in self.specials.items()}
        missing = [self.specials[r] for r in ("pad", "mask") if ids.get(r) is None]
        if missing:
            raise SelfSupError(f"the tokenizer has no {' or '.join(missing)} token; masked language "
                               "modelling needs a padding and a mask token")
        self.ids = ids
        self.pad_id, self.mask_id = ids["pad"], ids["mask"]
        self.special_ids = sorted(i for i in ids.values() if i is not None)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    # -- building ------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> Tokenizer:
        """A WordPiece tokenizer (lower-cased BERT normalisation) trained on ``texts``."""
        from tokenizers import Tokenizer as Backend, decoders, models, normalizers, pre_tokenizers, processors, trainers

        if vocab_size < MIN_VOCAB:
            raise SelfSupError(f"data.vocab_size must be at least {MIN_VOCAB}, got {vocab_size}")
        backend = Backend(models.WordPiece(unk_token=SPECIALS["unk"]))
        backend.normalizer = normalizers.BertNormalizer(lowercase=True)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS.values()),
                                            show_progress=False)
        backend.train_from_iterator(texts, trainer)
        cls_id, sep_id = backend.token_to_id(SPECIALS["cls"]), backend.token_to_id(SPECIALS["sep"])
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
        return cls(backend, SPECIALS)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """The tokenizer in a local folder (``tokenizer.json`` and its config, as
        ``save_pretrained`` writes them) or a ``tokenizer.json`` file; never downloads."""
        p = Path(path).expanduser()
        if not p.exists():
            raise SelfSupError(f"tokenizer {str(path)!r}: no such file or folder; give a folder that holds "
                               "tokenizer.json (e.g. one written by save_pretrained)")
        from tokenizers import Tokenizer as Backend

        if p.is_file():
            return cls(_read_backend(Backend, p), SPECIALS)._check_vocabulary(p)
        try:
            from transformers import AutoTokenizer

            hf = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except Exception as err:  # transformers raises OSError, ValueError, KeyError ... for bad folders
            raise SelfSupError(f"tokenizer folder {str(p)!r} cannot be read ({type(err).__name__}: "
                               f"{str(err).splitlines()[0][:200]})") from None
        if not getattr(hf, "is_fast", False):
            raise SelfSupError(f"tokenizer folder {str(p)!r} holds a slow (Python) tokenizer; selfsup needs a "
                               "fast one (tokenizer.json)")
        specials = {role: getattr(hf, f"{role}_token") for role in SPECIALS if getattr(hf, f"{role}_token", None)}
        return cls(hf.backend_tokenizer, specials)._check_vocabulary(p)

    def _check_vocabulary(self, source: Path) -> Tokenizer:
        """``self``, or a one-line error when it holds no token but its special ones: every
        word would become [UNK], or the backend would fail at the first sample."""
        words = set(self.backend.get_vocab(with_added_tokens=True)) - set(self.specials.values())
        if not words:
            raise SelfSupError(f"tokenizer {str(source)!r} has an empty vocabulary (only its special tokens); give "
                               "a trained tokenizer, or drop --tokenizer to train one on the data")
        return self

    def to_json(self) -> str:
        return json.dumps({"backend": self.backend.to_str(), "specials": self.specials})

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        from tokenizers import Tokenizer as Backend

        d = json.loads(text)
        return cls(Backend.from_str(d["backend"]), d["specials"])

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the files ``transformers.AutoTokenizer.from_pretrained(folder)`` reads."""
        from transformers import PreTrainedTokenizerFast

        fast = PreTrainedTokenizerFast(tokenizer_object=self.backend,
                                       **{f"{role}_token": tok for role, tok in self.specials.items()})
        fast.save_pretrained(str(folder))

    # -- using ---------------------------------------------------------------------

    def encode(self, texts: list[str], max_length: int) -> tuple[np.ndarray, int]:
        """``texts`` -> token ids ``(N, max_length)`` int32, right-padded with the pad id,
        and how many samples were longer and got truncated (their end is cut, the
        closing special token kept)."""
        if max_length < 4:
            raise SelfSupError(f"data.max_length must be at least 4 tokens, got {max_length}")
        self.backend.enable_truncation(max_length)
        try:
            encodings = self.backend.encode_batch(list(texts))
        except Exception as err:  # the Rust side raises a plain Exception, e.g. "Missing [UNK] token"
            raise SelfSupError(f"the tokenizer cannot encode the text ({str(err).splitlines()[0][:200]}); give "
                               "another tokenizer") from None
        finally:
            self.backend.no_truncation()
        out = np.full((len(encodings), max_length), self.pad_id, dtype=np.int32)
        truncated = 0
        for row, enc in enumerate(encodings):
            out[row, :len(enc.ids)] = enc.ids
            truncated += bool(enc.overflowing)
        return out, truncated

    def word_starts(self) -> np.ndarray:
        """(vocab,) bool: True for tokens that begin a word (not a ``##`` continuation)."""
        vocab = self.backend.get_vocab(with_added_tokens=True)
        starts = np.ones(self.vocab_size, dtype=bool)
        for token, i in vocab.items():
            if token.startswith("##") and i < len(starts):
                starts[i] = False
        return starts


def _read_backend(backend_cls, path: Path):
    try:
        return backend_cls.from_file(str(path))
    except Exception as err:  # the Rust side raises a plain Exception for a bad file
        raise SelfSupError(f"tokenizer file {str(path)!r} cannot be read ({str(err).splitlines()[0][:200]})") from None
