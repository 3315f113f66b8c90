"""The text encoder: a Hugging Face BERT behind the one encoder contract.

``TextEncoder(ids)`` maps token ids ``(N, L)`` (right-padded with the tokenizer's pad
id; the attention mask is ``ids != pad`` unless given) to a pooled ``(N, hidden)``
vector -- the mean of the last hidden states over real tokens (``pooling="mean"``,
which usually beats [CLS] for frozen features: Reimers & Gurevych, "Sentence-BERT",
EMNLP 2019, arXiv 1908.10084) or the [CLS] state (``"cls"``) -- so
kNN, the linear probe, fine-tuning, embedding and the diagnostics take text unchanged.
The encoder carries its tokenizer, which tells every evaluation how to turn raw text
into its input (:meth:`TextEncoder.data_options`).

It saves as a Hugging Face folder (``save_pretrained``: ``config.json``,
``model.safetensors``, the tokenizer files) that ``transformers.AutoModel`` and
``AutoTokenizer`` load offline, and starts from such a folder (``from_pretrained``,
for ``--init``: continued pretraining of a published BERT-family model).
"""
from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from selfsup.data.text import TextOptions
from selfsup.data.tokenizer import Tokenizer
from selfsup.errors import SelfSupError
from selfsup.models.backbones import BACKBONES

POOLINGS = ("mean", "cls")
SELFSUP_FILE = "selfsup.json"  # pooling and max length, next to the Hugging Face files


def _quiet_transformers():
    """transformers' logger at error level and without its progress bars: loading a folder
    into a model without a pooler (or without an MLM head) is expected here, not worth a
    warning, and a local weights file loads too fast for a progress bar to help."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


class TextEncoder(nn.Module):
    """BERT (``transformers.BertModel`` without its pooler) + pooling + the tokenizer."""

    def __init__(self, config: dict, tokenizer: Tokenizer | str, *, pooling: str = "mean", max_length: int = 128):
        super().__init__()
        from transformers import BertConfig, BertModel

        if pooling not in POOLINGS:
            raise SelfSupError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        self.tokenizer = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.from_json(tokenizer)
        cfg = BertConfig(**config)
        if max_length > cfg.max_position_embeddings:
            raise SelfSupError(f"data.max_length {max_length} is longer than the model's "
                               f"{cfg.max_position_embeddings} positions; lower --max-length")
        if self.tokenizer.vocab_size > cfg.vocab_size:
            raise SelfSupError(f"the tokenizer has {self.tokenizer.vocab_size} tokens but the model only "
                               f"{cfg.vocab_size} embeddings; use the tokenizer that came with the model")
        _quiet_transformers()
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.config = cfg
        self.pooling, self.max_length, self.pad_id = pooling, max_length, self.tokenizer.pad_id
        self.num_features = cfg.hidden_size
        self.name = "bert"  # the backbone registry's name, for rebuilding from a file
        self.kwargs = {"config": cfg.to_dict(), "tokenizer": self.tokenizer.to_json(), "pooling": pooling,
                       "max_length": max_length}
        self.init_from: Path | None = None  # the folder the weights came from (from_pretrained)

    def data_options(self) -> dict:
        """What a data source needs to give this encoder its input: its tokenizer and length."""
        return {"text": TextOptions(tokenizer=self.tokenizer, max_length=self.max_length)}

    def hidden_states(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states (N, L', D) and the mask (N, L') of ``ids`` (N, L), with the
        padding columns beyond the longest sample dropped (L' <= L)."""
        mask = (ids != self.pad_id) if attention_mask is None else attention_mask.bool()
        longest = max(int(mask.sum(1).max()), 1) if mask.numel() else 1
        ids, mask = ids[:, :longest], mask[:, :longest]  # (N, L')
        h = self.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (N, L', D)
        return h, mask

    def pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return h[:, 0]
        m = mask.unsqueeze(-1).to(h.dtype)  # (N, L', 1)
        return (h * m).sum(1) / m.sum(1).clamp_min(1)  # (N, D)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(*self.hidden_states(ids, attention_mask))

    # -- Hugging Face folders ---------------------------------------------------------

    def save_pretrained(self, folder: str | Path) -> Path:
        """config.json + model.safetensors + tokenizer files + selfsup.json (pooling)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.bert.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(folder)
        (folder / SELFSUP_FILE).write_text(json.dumps({"pooling": self.pooling, "max_length": self.max_length}))
        (folder / "README.md").write_text(self.usage())
        return folder

    def usage(self) -> str:
        """How to get this encoder's embedding from the exported folder with plain transformers."""
        pooled = ("the mean of last_hidden_state over the real tokens (attention_mask == 1)" if self.pooling == "mean"
                  else "last_hidden_state[:, 0], the [CLS] token")
        return ("# A selfsup text encoder\n\n"
                "Load with `transformers.AutoModel.from_pretrained(folder)` and `AutoTokenizer.from_pretrained(folder)`"
                f", then `model.eval()`. The embedding selfsup trained and evaluated is {pooled}, with at most "
                f"{self.max_length} tokens per text. `pooler_output` is NOT part of it: BERT's pooler was never "
                "trained here, transformers initialises it at random on load.\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, pooling: str | None = None,
                        max_length: int | None = None) -> TextEncoder:
        """The BERT-family model and tokenizer in a local folder, offline."""
        folder = Path(folder).expanduser()
        if not (folder / "config.json").is_file():
            raise SelfSupError(f"{str(folder)!r} is not a Hugging Face model folder (no config.json)")
        config, saved = _read_json(folder / "config.json"), _read_json(folder / SELFSUP_FILE)
        if config.get("model_type") != "bert":
            raise SelfSupError(f"{folder} holds a {config.get('model_type')!r} model; selfsup's text encoder "
                               "is BERT-family (model_type 'bert')")
        from transformers import BertConfig, BertModel

        _quiet_transformers()
        cfg = BertConfig.from_pretrained(str(folder), local_files_only=True)
        length = max_length or saved.get("max_length") or min(128, cfg.max_position_embeddings)
        enc = cls(cfg.to_dict(), Tokenizer.load(folder), pooling=pooling or saved.get("pooling", "mean"),
                  max_length=length)
        safetensors = any(folder.glob("model*.safetensors"))
        if not safetensors:
            _refuse_unsafe_pickles(folder)
        try:  # safetensors when the folder has them, so no pickle is read at all
            weights = BertModel.from_pretrained(str(folder), add_pooling_layer=False, local_files_only=True,
                                                use_safetensors=safetensors or None)
        except Exception as err:  # transformers raises OSError, ValueError, RuntimeError ... for bad weights
            raise SelfSupError(f"the weights in {folder} cannot be loaded ({type(err).__name__}: "
                               f"{str(err).strip().splitlines()[0][:200]})") from None
        enc.bert.load_state_dict(weights.state_dict())
        enc.init_from = folder
        return enc.eval()


def _refuse_unsafe_pickles(folder: Path) -> None:
    """A one-line error unless every ``pytorch_model*.bin`` in ``folder`` holds plain
    tensors: each is read first with torch's restricted unpickler (``weights_only``),
    which refuses anything else without running it, so transformers never unpickles a
    file that could run code, whatever its version does."""
    for file in sorted(folder.glob("pytorch_model*.bin")):
        try:
            with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's concern
                warnings.simplefilter("ignore")
                torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
        except Exception as err:  # UnpicklingError for a crafted pickle, RuntimeError for a damaged file ...
            raise SelfSupError(f"{file} is not plain weights (torch refused it, nothing in it was run: "
                               f"{type(err).__name__}); use a model saved as model.safetensors") from None


def _read_json(path: Path) -> dict:
    """A model folder's JSON file as a dict ({} when it is absent), a one-line error when unreadable."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SelfSupError(f"{path} is not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise SelfSupError(f"{path} does not hold a JSON object")
    return data


@BACKBONES.register("bert", modality="text",
                    help="Hugging Face BERT encoder for text (cpu preset 2 layers x 128; gpu preset BERT-base)")
def bert(*, tokenizer: Tokenizer | str, max_length: int = 128, layers: int = 4, hidden: int = 256,
         heads: int = 4, intermediate: int | None = None, dropout: float = 0.1, pooling: str = "mean",
         config: dict | None = None) -> TextEncoder:
    """A BERT of the given shape (``config``, a saved BertConfig dict, takes precedence)."""
    if config is None:
        tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.from_json(tokenizer)
        if hidden % heads:
            raise SelfSupError(f"backbone_cfg.hidden {hidden} must be divisible by backbone_cfg.heads {heads}")
        config = dict(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=intermediate or 4 * hidden,
                      hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                      max_position_embeddings=max_length, pad_token_id=tok.pad_id, type_vocab_size=2)
    return TextEncoder(config, tokenizer, pooling=pooling, max_length=max_length)
