"""Masked language modelling: DistilBERT's pretraining objective (the reference's
prepare_batch_mlm), on binarized token sequences.

Every step re-masks its batch: mlm_mask_prop of the real tokens are chosen with weight
max(count, 1)^(-mlm_smoothing), so rare tokens are predicted more often than their frequency
alone would have them; each chosen token becomes [MASK] (word_mask), stays (word_keep) or
becomes a random token (word_rand). Special tokens are never chosen nor used as replacements
(the reference could draw them). The KL is taken over every real token, or only over the
masked ones with --restrict_ce_to_mask; the hard-label loss over the masked ones. Evaluation
masks the same share uniformly (fixed masks from a seeded generator) and reports masked-token
accuracy and perplexity, for the teacher too.
"""

import math
import os
from typing import Iterable, Optional, Tuple

import numpy as np
import torch
from transformers import AutoModelForMaskedLM

from distillation.data.lm_seqs_dataset import collate_lm, load_lm_sequences
from distillation.data.safe_pickle import load_data_pickle
from distillation.errors import InputError
from distillation.losses import cross_entropy_sum
from distillation.objectives.base import Objective
from distillation.objectives.lm import IGNORE, eval_token_stats, flat_positions, gather_rows, token_metrics


def mlm_token_probs(counts: torch.Tensor, smoothing: float, special_ids: Iterable[int]) -> torch.Tensor:
    """Masking weight of every vocabulary id.

    Args:
        counts: [V] occurrences of each id in the corpus (scripts/token_counts.py).
        smoothing: the exponent; 0 weighs every token alike, 1 inversely to its frequency.
        special_ids: ids that must never be chosen ([CLS], [SEP], [PAD], [MASK], [UNK]...).
    Returns:
        [V] float32: max(count, 1)^(-smoothing), 0 at the special ids.
    """
    probs = counts.double().clamp(min=1).pow(-smoothing)  # float64: counts reach billions
    special = [i for i in special_ids if 0 <= i < len(probs)]
    probs[special] = 0.0
    return probs.float()


def choose_mlm_positions(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, token_probs: torch.Tensor, mask_prop: float,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """The positions to predict, drawn over the flattened batch as the reference does.

    Args:
        input_ids, attention_mask: [B, S].
        token_probs: [V] weights from mlm_token_probs (0 = never chosen).
        mask_prop: share of the batch's real (attention_mask=1) tokens to choose.
    Returns:
        [N] int64 flat indices into B*S, distinct; N = ceil(mask_prop * real tokens), capped by
        the number of choosable positions. Padding and zero-weight tokens are never chosen.
    """
    weights = token_probs[input_ids.reshape(-1)] * attention_mask.reshape(-1)
    n = min(math.ceil(mask_prop * int(attention_mask.sum())), int((weights > 0).sum()))
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=input_ids.device)
    return torch.multinomial(weights, n, replacement=False, generator=generator)


def mask_tokens(
    input_ids: torch.Tensor, positions: torch.Tensor, mask_id: int, replacement_ids: torch.Tensor,
    word_mask: float, word_keep: float, generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Corrupt the chosen positions: [MASK] with p=word_mask, unchanged with p=word_keep, else a
    token drawn uniformly from `replacement_ids` (p = 1 - word_mask - word_keep).

    Args:
        input_ids: [B, S]; positions: [N] flat indices into B*S (from choose_mlm_positions).
        replacement_ids: [R] ids a random replacement may take (the non-special ones).
    Returns:
        (inputs [B, S], labels [B, S]): labels hold the original ids at `positions`, -100 elsewhere.
    """
    flat = input_ids.reshape(-1)
    original = flat[positions]
    labels = torch.full_like(flat, IGNORE)
    labels[positions] = original
    u = torch.rand(len(positions), generator=generator, device=flat.device)
    pick = torch.randint(len(replacement_ids), (len(positions),), generator=generator, device=flat.device)
    new = torch.where(u < word_mask, mask_id, torch.where(u < word_mask + word_keep, original, replacement_ids[pick]))
    inputs = flat.clone()
    inputs[positions] = new
    return inputs.view_as(input_ids), labels.view_as(input_ids)


def load_token_counts(path: str) -> torch.Tensor:
    """The pickled list of scripts/token_counts.py as a [V] float64 tensor."""
    if not os.path.isfile(path):
        raise InputError(f"--token_counts: no such file '{path}'")
    what = "a token counts pickle"
    bad = f"--token_counts: '{path}' is not {what} (make it with scripts/token_counts.py)"
    try:
        counts = np.asarray(load_data_pickle(path, "--token_counts", what))
    except (ValueError, TypeError):  # ragged or mixed content
        raise InputError(bad) from None
    if counts.ndim != 1 or not len(counts) or not np.issubdtype(counts.dtype, np.number) or (counts < 0).any():
        raise InputError(bad)
    return torch.as_tensor(counts, dtype=torch.float64)


class MaskedLM(Objective):
    name = "mlm"
    task_loss_name = "mlm"
    auto_model_class = AutoModelForMaskedLM
    deterministic_inputs = False
    metrics = {"loss": "min", "perplexity": "min", "masked_accuracy": "max"}
    pipeline_task = "fill-mask"
    cache_refusal = "mlm re-masks every batch at random, so the teacher's logits differ at every step and cannot be cached"

    def __init__(self, cfg, tokenizer, teacher_config=None):
        super().__init__(cfg, tokenizer, teacher_config)
        if tokenizer.mask_token_id is None:
            raise InputError("--tokenizer_name: the tokenizer has no mask token, which --objective mlm needs")
        self.token_counts = load_token_counts(cfg.token_counts)
        special = sorted(set(tokenizer.all_special_ids))
        self.token_probs = mlm_token_probs(self.token_counts, cfg.mlm_smoothing, special)
        self.eval_probs = mlm_token_probs(self.token_counts, 0.0, special)
        # Random replacements come from the tokenizer's own ids (not padded embedding rows).
        keep = torch.ones(len(tokenizer), dtype=torch.bool)
        keep[special] = False
        self.replacement_ids = keep.nonzero().squeeze(1)
        self.columns = len(tokenizer)
        self._on_device = {}

    def load_dataset(self, path, flag):
        self.no_routes(path, flag)
        return load_lm_sequences(path, flag, self.tokenizer, self.cfg.max_seq_length)

    def collate(self, examples):
        return collate_lm(examples, self.tokenizer.pad_token_id, with_labels=False)

    def check_models(self, teacher, student, train_dataset):
        vocab = student.config.vocab_size
        if len(self.token_counts) != vocab:
            raise InputError(
                f"--token_counts: holds {len(self.token_counts)} counts but the model's vocab_size is {vocab} "
                f"(make it with scripts/token_counts.py --vocab_size {vocab})"
            )

    def _tensors(self, device):
        if device not in self._on_device:
            self._on_device[device] = tuple(t.to(device) for t in (self.token_probs, self.eval_probs, self.replacement_ids))
        return self._on_device[device]

    def prepare_batch(self, batch, generator=None):
        """Training (global RNG) chooses by the smoothed token_probs; evaluation (a seeded
        `generator`) chooses uniformly among non-special tokens, so that held-out masked accuracy
        and perplexity are the usual masked-LM ones rather than scores on mostly rare tokens."""
        token_probs, eval_probs, replacement_ids = self._tensors(batch["input_ids"].device)
        probs = token_probs if generator is None else eval_probs
        positions = choose_mlm_positions(batch["input_ids"], batch["attention_mask"], probs, self.cfg.mlm_mask_prop, generator)
        inputs, labels = mask_tokens(
            batch["input_ids"], positions, self.tokenizer.mask_token_id, replacement_ids,
            self.cfg.word_mask, self.cfg.word_keep, generator,
        )
        return {**batch, "input_ids": inputs, "labels": labels}

    def counts(self, batch):
        masked = (batch["labels"] != IGNORE).sum()
        real = batch["attention_mask"].sum()
        return {"task": masked, "rows": masked if self.cfg.restrict_ce_to_mask else real, "tokens": real}

    def task_loss(self, student_logits, batch):
        positions = flat_positions(batch["labels"] != IGNORE)
        return cross_entropy_sum(gather_rows(student_logits, positions, self.columns), batch["labels"].reshape(-1)[positions])

    def distill_rows(self, student_logits, teacher_logits, batch):
        rows = batch["labels"] != IGNORE if self.cfg.restrict_ce_to_mask else batch["attention_mask"].bool()
        positions = flat_positions(rows)
        return gather_rows(student_logits, positions, self.columns), gather_rows(teacher_logits, positions, self.columns)

    def eval_batch(self, student_logits, teacher_logits, batch):
        positions = flat_positions(batch["labels"] != IGNORE)
        targets = batch["labels"].reshape(-1)[positions]
        # Masked positions are never special tokens: every target is scored.
        return eval_token_stats(student_logits, teacher_logits, positions, targets, torch.ones_like(targets, dtype=torch.bool),
                                self.columns)

    def eval_metrics(self, stats):
        return token_metrics(stats, "masked_accuracy")
