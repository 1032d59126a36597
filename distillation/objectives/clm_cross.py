"""Causal language modelling from a teacher with another tokenizer (--teacher_tokenizer).

The student learns from its own tokens as in clm; the teacher reads the same text in its own
tokens (data/cross_text.py), and each student position is paired with a teacher position by
where their tokens end in the text (data/alignment.py). What the two distributions share
depends on --cross_tokenizer (token_losses.CrossTokenLosses): `aligned` compares them where the
positions end at one character, each teacher token's probability given to the student token that
stands for it (spelt alike, else the first of its text), and ULD (sorted probabilities, no
mapping) elsewhere; `uld` uses ULD everywhere.

Evaluation scores the student on its tokens and the teacher on its own; bits per byte, over
the bytes each one's targets spell, is the number that compares them.
"""

import torch

from distillation.data.alignment import first_tokens, shared_vocabulary
from distillation.data.cross_text import collate_cross, load_cross_text, with_answers
from distillation.data.lm_seqs_dataset import is_binarized_path
from distillation.errors import InputError
from distillation.models import max_positions
from distillation.offline_logits import SparseTargets, cached_offsets, read_manifest
from distillation.objectives.clm import CausalLM
from distillation.objectives.lm import gather_rows, token_stats


class CrossTokenizerCLM(CausalLM):
    def __init__(self, cfg, tokenizer, teacher_config, teacher_tokenizer):
        super().__init__(cfg, tokenizer, teacher_config)
        self.teacher_tokenizer = teacher_tokenizer
        self.teacher_columns = len(teacher_tokenizer)
        self.teacher_max_len = (teacher_config and max_positions(teacher_config)) or 1_000_000
        student_ids, teacher_ids = shared_vocabulary(tokenizer, teacher_tokenizer)
        self.shared = (torch.tensor(student_ids), torch.tensor(teacher_ids))  # [M] each: the tokens both spell alike
        self.teacher_to_student = torch.full((self.teacher_columns,), -1, dtype=torch.long)  # -1: the teacher's only
        self.teacher_to_student[self.shared[1]] = self.shared[0]
        # [V_t] the student token each teacher token's probability goes to (--cross_tokenizer aligned)
        self.first = torch.tensor(first_tokens(tokenizer, teacher_tokenizer, (student_ids, teacher_ids)))
        self.teacher_pad_id = teacher_tokenizer.pad_token_id if teacher_tokenizer.pad_token_id is not None else (
            teacher_tokenizer.eos_token_id or 0)

    def describe(self, train_dataset) -> str:
        """The run header's line: the two vocabularies and how the data's positions pair (over
        the first thousand examples: aligning all of a large set would delay the start)."""
        n = min(len(train_dataset), 1000)
        where = "the training targets'" if n == len(train_dataset) else f"the first {n:,} training examples' target"
        return (f"the teacher reads its own tokenizer's {self.teacher_columns:,} tokens, the student its {self.columns:,} "
                f"({len(self.shared[0]):,} spell alike); {100 * train_dataset.exact_share(n):.1f}% of {where} positions "
                f"end at one character in both; --cross_tokenizer {self.cfg.cross_tokenizer}")

    def load_dataset(self, path, flag):
        if is_binarized_path(path):
            raise InputError(f"{flag}: '{path}' is binarized (the student's token ids only); a teacher with another tokenizer "
                             "(--teacher_tokenizer) needs the text: give the .txt file or text records")
        # A cross-tokenizer cache (--teacher_logits) holds where its training targets' tokens end;
        # evaluation has no cached teacher, so the held-out text is only read by the student's side.
        cache = self.cfg.teacher_logits
        cached = cached_offsets(cache, read_manifest(cache)) if cache and flag == "--data_file" else None
        return load_cross_text(path, flag, self.tokenizer, self.teacher_tokenizer, self.cfg.max_seq_length, self.teacher_max_len, cached,
                               self.cfg.prompt_template)

    def collate(self, examples):
        return collate_cross(examples, self.tokenizer.pad_token_id, self.teacher_pad_id)

    def with_answers(self, batch, examples):
        """On-policy: the student's answers detokenised, and re-tokenised after the teacher's own prompts."""
        prompts = [ids[:n].tolist() for ids, n in zip(batch["teacher_input_ids"], batch["teacher_prompt_len"].tolist())]
        answers = with_answers(examples, prompts, self.tokenizer, self.teacher_tokenizer, self.teacher_max_len)
        return self.collate([{**answers[i], "index": e["index"]} for i, e in enumerate(examples)])

    def teacher_batch(self, batch):
        return {"input_ids": batch["teacher_input_ids"], "attention_mask": batch["teacher_attention_mask"],
                "labels": batch["teacher_labels"], "prompt_len": batch["teacher_prompt_len"], "index": batch["index"]}

    def _paired(self, batch):
        """([N] flat student positions that predict a target and have a teacher position,
        [N] the teacher rows paired with them: flat positions of its [B, S_t] logits, or the rows
        of a cache or a server (each example's target positions in turn), [N] bool: the two end at
        one character)."""
        positions, _ = self.token_rows(batch)
        teacher = batch["teacher_position"].reshape(-1)[positions]
        has = teacher >= 0
        rows = positions[has] // batch["input_ids"].shape[1]
        exact = batch["aligned"].reshape(-1)[positions[has]]
        if self.cfg.teacher_logits:
            first = torch.cumsum(batch["teacher_rows"], 0) - batch["teacher_rows"]  # each example's first cached row
            return positions[has], first[rows] + teacher[has], exact
        t_rows = rows * batch["teacher_input_ids"].shape[1] + teacher[has]
        if self.cfg.teacher_url:  # the server answers at the teacher's target positions only, in their order
            targets = self.token_rows(self.teacher_batch(batch))[0]
            row_of = torch.full((batch["teacher_input_ids"].numel(),), -1, dtype=torch.long, device=targets.device)
            row_of[targets] = torch.arange(len(targets), device=targets.device)
            t_rows = row_of[t_rows]
            kept = t_rows >= 0  # a position past the teacher's last target (its sequence was cut shorter) pairs with none
            return positions[has][kept], t_rows[kept], exact[kept]
        return positions[has], t_rows, exact

    def distill_rows(self, student_logits, teacher_logits, batch):
        """([N, V_s] student rows, [N, V_t] the teacher rows paired with them, or their
        SparseTargets from a cache or a server)."""
        return self.paired_rows(student_logits, teacher_logits, batch)[:2]

    def paired_rows(self, student_logits, teacher_logits, batch):
        """distill_rows, and [N] bool: the two positions of each row end at the same character."""
        s_positions, t_rows, exact = self._paired(batch)
        student = gather_rows(student_logits, s_positions, self.columns)
        if isinstance(teacher_logits, SparseTargets):
            return student, SparseTargets(teacher_logits.method, teacher_logits.ids[t_rows], teacher_logits.values[t_rows],
                                          tail=teacher_logits.tail[t_rows], rest_as_one=teacher_logits.rest_as_one), exact
        return student, gather_rows(teacher_logits, t_rows, self.teacher_columns), exact

    def text_bytes(self, batch, targets, rows) -> int:
        """The bytes the student's targets spell, from their offsets (data/cross_text.py): exact
        whatever a tokenizer's decode adds."""
        return int(batch["bytes"].sum())

    def teacher_target_rows(self, batch) -> int:
        """The rows a cache holds for this batch: its teacher's target positions."""
        return int(batch["teacher_rows"].sum())

    def eval_batch(self, student_logits, teacher_logits, batch):
        """The student's statistics on its tokens (CausalLM's), the teacher's on its own tokens
        (`teacher_*`); `bytes` and `teacher_bytes`: what each side's targets spell, by their offsets."""
        stats = super().eval_batch(student_logits, None, batch)
        if teacher_logits is None:
            return stats
        positions, targets = self.token_rows(self.teacher_batch(batch))
        special = torch.tensor(sorted(set(self.teacher_tokenizer.all_special_ids)), device=targets.device)
        stats.update(token_stats(teacher_logits, positions, targets, ~torch.isin(targets, special), self.teacher_columns, None, 0,
                                 "teacher_"))
        stats["teacher_bytes"] = batch["teacher_bytes"].sum().reshape(1).cpu()
        return stats
