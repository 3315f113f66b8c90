"""BERT masked language modelling on text.

Devlin, Chang, Lee & Toutanova, "BERT: Pre-training of Deep Bidirectional Transformers
for Language Understanding" (NAACL 2019, arXiv 1810.04805), Sec. 3.1.  Per step, on a batch of token ids (N, L) right-padded with the tokenizer's pad id:

1. **select** (dynamic masking, fresh every batch, from the run's generator): each token
   that is neither special nor padding is selected with probability ``mask_prob``
   (0.15); with ``whole_word`` a word's first piece is drawn and its ``##`` pieces follow;
2. **corrupt** the selected tokens: 80% become [MASK], 10% a random *non-special* token
   (Hugging Face's collator may draw special ids; this never does), 10% stay as they are;
3. **predict**: the encoder's last hidden states at the selected positions only go
   through the MLM head (dense + GELU + LayerNorm, decoder tied to the input
   embeddings); the loss is the cross-entropy against the original tokens
   (:func:`selfsup.methods.losses.masked_lm_loss`; 0 for a batch with nothing selected).

Why 80/10/10: [MASK] never occurs when the encoder is used, so always showing it would
teach features for an input the encoder never sees again; the random and unchanged 10%
make every token a possible target, so the encoder must represent each one.  Dynamic
masking (a new draw every batch, as RoBERTa does, Liu et al. 2019, arXiv 1907.11692)
instead of the paper's static masks gives a small corpus many more distinct targets.

The encoder is a :class:`selfsup.models.text.TextEncoder`; downstream tasks use its
mean-pooled hidden states.  The presets follow the paper's optimiser (Appendix A.2: Adam
with betas (0.9, 0.999), weight decay 0.01, linear warm-up then linear decay) and its
public code (decoupled weight decay, i.e. AdamW, that skips LayerNorm weights and biases;
eps 1e-6; gradient clipping at norm 1.0).

Usage (the ``cpu`` preset is the default)::

    selfsup.pretrain("mlm", "lang", out_dir="runs/mlm")
    # or: selfsup pretrain --method mlm --data lang --out runs/mlm
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from selfsup.methods.base import METHODS, Method
from selfsup.methods.losses import IGNORE_INDEX, masked_lm_loss


@dataclass
class MLMConfig:
    mask_prob: float = 0.15       # share of eligible (non-special, non-padding) tokens selected
    mask_token_frac: float = 0.8  # of the selected: replaced by [MASK]
    random_token_frac: float = 0.1  # ... by a random non-special token; the rest stay unchanged
    whole_word: bool = False      # select whole words (a first piece and its ## continuations)


def mask_tokens(ids: torch.Tensor, generator: torch.Generator, *, special_ids: list[int], mask_id: int,
                vocab_size: int, mask_prob: float = 0.15, mask_token_frac: float = 0.8,
                random_token_frac: float = 0.1, word_starts: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of ``ids`` (N, L): returns ``(inputs, labels)``, both (N, L);
    ``labels`` holds the original id at selected positions and -100 elsewhere.

    Random numbers come from ``generator`` on the CPU, so a run is the same on any device.
    ``word_starts`` ((vocab,) bool, True where a token begins a word) turns on whole-word
    selection.

    Example (ids 0-3 are the special tokens, 3 is [MASK]; half of the tokens selected)::

        >>> import torch
        >>> from selfsup.methods.mlm import mask_tokens
        >>> ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11, 2, 0]])  # [CLS] ... [SEP] [PAD]
        >>> inputs, labels = mask_tokens(ids, torch.Generator().manual_seed(0), special_ids=[0, 1, 2, 3],
        ...                              mask_id=3, vocab_size=20, mask_prob=0.5)
        >>> inputs
        tensor([[ 1,  5,  3,  3,  3,  9,  3, 11,  2,  0]])
        >>> labels
        tensor([[-100, -100,    6,    7,    8, -100,   10, -100, -100, -100]])
    """
    device = ids.device
    cpu = ids.cpu()
    special = torch.tensor(special_ids, dtype=cpu.dtype)
    eligible = ~torch.isin(cpu, special)  # (N, L): real, non-special tokens
    u_select = torch.rand(cpu.shape, generator=generator)
    u_action = torch.rand(cpu.shape, generator=generator)
    candidates = torch.tensor(sorted(set(range(vocab_size)) - set(special_ids)), dtype=cpu.dtype)
    random_ids = candidates[torch.randint(len(candidates), cpu.shape, generator=generator)]
    if word_starts is None:
        selected = eligible & (u_select < mask_prob)
    else:
        starts = eligible & word_starts[cpu]  # (N, L): first pieces of words
        word = torch.cumsum(starts.long(), dim=1)  # (N, L): 1-based index of the word a token is in
        chosen = torch.zeros(cpu.shape[0], cpu.shape[1] + 1, dtype=torch.bool)  # (N, L + 1) by word index
        chosen.scatter_(1, word * starts, starts & (u_select < mask_prob))  # non-starts write to column 0
        chosen[:, 0] = False
        selected = eligible & chosen.gather(1, word)
    to_mask = selected & (u_action < mask_token_frac)
    to_random = selected & (u_action >= mask_token_frac) & (u_action < mask_token_frac + random_token_frac)
    inputs = torch.where(to_mask, torch.full_like(cpu, mask_id), cpu)
    inputs = torch.where(to_random, random_ids, inputs)
    labels = torch.where(selected, cpu, torch.full_like(cpu, IGNORE_INDEX))
    return inputs.to(device), labels.to(device)


def mlm_head(config) -> nn.Module:
    """``transformers``' BERT MLM head (dense + GELU + LayerNorm, then the vocabulary
    decoder), initialised as BERT initialises it (normal(0, 0.02), zero biases)."""
    from transformers.models.bert.modeling_bert import BertOnlyMLMHead

    head = BertOnlyMLMHead(config)
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    nn.init.zeros_(head.predictions.bias)
    return head


def saved_head(folder: Path) -> dict[str, torch.Tensor]:
    """The MLM head weights (``cls.predictions.*``) in a Hugging Face folder, if it has them
    (``model.safetensors``, or ``pytorch_model.bin`` read with ``weights_only``)."""
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        return {}
    return {k[len("cls."):]: v for k, v in state.items()
            if k.startswith("cls.predictions.") and "decoder.weight" not in k}


@METHODS.register("mlm", help="BERT masked language modelling on text (15% of tokens, 80/10/10)")
class MaskedLM(Method):
    Config = MLMConfig
    modalities = ("text",)
    presets = {
        # a compact BERT (Turc et al. 2019, "Well-Read Students Learn Better", arXiv
        # 1908.08962), small enough to learn on 2 CPU cores (measurements in docs/results.md)
        "cpu": {"backbone": "bert", "backbone_cfg": {"layers": 2, "hidden": 128, "heads": 2},
                "data.source": "lang", "optim.name": "adamw", "optim.base_lr": 8e-3, "optim.eps": 1e-6,
                "optim.weight_decay": 0.01, "optim.schedule": "linear", "optim.warmup_epochs": 1,
                "optim.clip_grad": 1.0, "train.batch_size": 64, "train.epochs": 20},
        # BERT-base shape; lr 1e-4 at batch 256 as in the paper (Appendix A.2)
        "gpu": {"backbone": "bert", "backbone_cfg": {"layers": 12, "hidden": 768, "heads": 12},
                "data.source": "lang",
                "optim.name": "adamw", "optim.base_lr": 1e-4, "optim.eps": 1e-6, "optim.weight_decay": 0.01,
                "optim.schedule": "linear", "optim.warmup_epochs": 1, "optim.clip_grad": 1.0,
                "train.batch_size": 256, "train.epochs": 40},
    }

    def __init__(self, encoder, cfg: MLMConfig, *, image_size=None, channels=None):
        super().__init__(encoder, cfg, image_size=image_size, channels=channels)
        tok = encoder.tokenizer
        self.head = mlm_head(encoder.config)
        emb = encoder.bert.embeddings.word_embeddings
        self.head.predictions.decoder.weight = emb.weight  # tied to the input embeddings
        self.head.predictions.decoder.bias = self.head.predictions.bias
        if encoder.init_from is not None:
            self.head.load_state_dict(saved_head(encoder.init_from), strict=False)
        self.special_ids, self.mask_id, self.vocab_size = tok.special_ids, tok.mask_id, tok.vocab_size
        self.register_buffer("word_starts", torch.from_numpy(tok.word_starts()), persistent=False)

    def corrupt(self, ids: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        return mask_tokens(ids, generator, special_ids=self.special_ids, mask_id=self.mask_id,
                           vocab_size=self.vocab_size, mask_prob=c.mask_prob, mask_token_frac=c.mask_token_frac,
                           random_token_frac=c.random_token_frac,
                           word_starts=self.word_starts.cpu() if c.whole_word else None)

    def predict(self, inputs: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Vocabulary logits (M, V) at the M selected positions and their labels (M,)."""
        h, _ = self.encoder.hidden_states(inputs, attention_mask)  # (N, L', D), padding columns dropped
        labels = labels[:, :h.shape[1]]
        selected = labels != IGNORE_INDEX  # (N, L')
        return self.head(h[selected]), labels[selected]  # (M, V), (M,)

    def training_step(self, x, generator):
        inputs, labels = self.corrupt(x, generator)
        logits, targets = self.predict(inputs, labels, x != self.encoder.pad_id)
        loss = masked_lm_loss(logits, targets)
        with torch.no_grad():
            acc = (logits.argmax(-1) == targets).float().mean().item() if len(targets) else 0.0
        return loss, {"masked_acc": acc, "masked": float(len(targets))}

    @torch.no_grad()
    def heldout_metrics(self, samples, *, train=None, seed: int = 0, batch_size: int = 128) -> dict[str, float]:
        """Masked-token accuracy and perplexity (exp of the mean masked cross-entropy) on
        ``samples`` (a TextSet), with a fixed masking seed; with ``train`` (the training
        split) also the unigram-frequency baseline: always the training split's most
        frequent token, and the perplexity of its add-one smoothed unigram distribution."""
        from selfsup.data import to_input
        from selfsup.data.loader import Loader

        device = next(self.parameters()).device
        gen = torch.Generator().manual_seed(seed)
        was_training = self.training
        self.eval()
        total_ce, correct, count, targets_all = 0.0, 0, 0, []
        for _, batch in Loader(samples, batch_size, shuffle=False, drop_last=False).epoch():
            x = to_input(batch, device)
            inputs, labels = self.corrupt(x, gen)
            logits, targets = self.predict(inputs, labels, x != self.encoder.pad_id)
            if len(targets):
                total_ce += nn.functional.cross_entropy(logits.float(), targets, reduction="sum").item()
                correct += int((logits.argmax(-1) == targets).sum())
                count += len(targets)
                targets_all.append(targets.cpu())
        self.train(was_training)
        out = {"masked_accuracy": correct / max(count, 1), "perplexity": math.exp(total_ce / max(count, 1)),
               "masked_tokens": count}
        if train is not None and count:
            unigram = token_counts(train, self.vocab_size, self.special_ids)
            t = torch.cat(targets_all).numpy()
            p = (unigram + 1.0) / (unigram.sum() + len(unigram))
            out["unigram_accuracy"] = float((t == int(np.argmax(unigram))).mean())
            out["unigram_perplexity"] = float(np.exp(-np.log(p[t]).mean()))
        return out


def token_counts(samples, vocab_size: int, special_ids: list[int]) -> np.ndarray:
    """(vocab,) counts of the non-special tokens in ``samples`` (a TextSet)."""
    counts = np.bincount(np.asarray(samples.tokens).reshape(-1), minlength=vocab_size)[:vocab_size].astype(np.float64)
    counts[special_ids] = 0
    return counts
