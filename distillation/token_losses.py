"""The loss terms computed from the models' outputs: the hard-label CE ("task"), the
soft-target divergence ("ce") and the logits MSE ("mse"), as sums (the Distiller normalises).

`DenseTokenLosses` takes full logits [B, S, V]. `ChunkedTokenLosses` (--loss_chunk_rows, clm)
takes the final hidden states [B, S, H] of both models and runs each LM head over a chunk of
target rows at a time, under activation checkpointing: a chunk's logits are freed after its
forward and recomputed in its backward, so the [tokens, vocab] logits never exist at once (at
a 152k vocabulary, 8 x 1,024 tokens of fp32 logits are ~5 GB per model). The same sums, in the
same fp32 maths; the price is one more LM-head matmul per chunk in backward. Evaluation takes the
same path (`eval_outputs`): its statistics are computed a chunk of rows at a time.
"""

import torch
from torch.utils.checkpoint import checkpoint

from distillation.errors import InputError
from distillation.losses import (
    DIVERGENCES, cross_entropy_sum, logits_mse, projected_log_probs, sampled_kl, shared_topk_buckets, tempered_as_buckets, topk_buckets,
    topk_uld, uld,
)
from distillation.offline_logits import SparseTargets
from distillation.teachers.several import SeveralHidden
from distillation.models import final_outputs
from distillation.objectives.lm import HeadRows, gather_rows


class DenseTokenLosses:
    wants_logits = True  # what the models return to __call__: logits, or final hidden states

    def __init__(self, cfg, objective):
        self.cfg, self.objective = cfg, objective
        self.divergence = DIVERGENCES[cfg.divergence][0]

    def __call__(self, wanted, student_logits, teacher_logits, batch) -> dict:
        """{term: fp32 sum} for the terms of `wanted` among task, ce, mse."""
        terms = {}
        if "task" in wanted:
            terms["task"] = self.objective.task_loss(student_logits, batch)
        if "ce" in wanted or "mse" in wanted:
            s_rows, t_rows = self.objective.distill_rows(student_logits, teacher_logits, batch)
            terms.update(self._soft_terms(wanted, s_rows, t_rows))
        return terms

    def eval_outputs(self, student_out, teacher_out):
        """What evaluation scores: the models' logits as they come."""
        return student_out, teacher_out

    def member_outputs(self, j, out):
        """What evaluation scores of teacher j of several alone: its logits as they come."""
        return out

    def _soft_terms(self, wanted, s_rows, t_rows) -> dict:
        terms = {}
        if "ce" in wanted:
            terms["ce"] = self.divergence(s_rows, t_rows, self.cfg.temperature, self.cfg.divergence_beta)
        if "mse" in wanted:
            terms["mse"] = logits_mse(s_rows, t_rows)
        return terms


class ChunkedTokenLosses(DenseTokenLosses):
    wants_logits = False

    def __init__(self, cfg, objective, student, teacher, student_forward=None):
        """`teacher`: the run's (teachers/): its model's head, or each of several teachers' heads."""
        super().__init__(cfg, objective)
        self.rows = cfg.loss_chunk_rows
        self.student_head = checked_head(student, "student", student_forward)
        models = [m.model for m in teacher.members] if teacher.members else [teacher.model] if teacher.model is not None else []
        if any(m is None for m in models):
            raise InputError("--loss_chunk_rows: every teacher of --teachers must be a local model (the chunked losses apply "
                             "its LM head to its hidden states); use --loss_chunk_rows 0")
        self.teacher_heads = [checked_head(m, "teacher") for m in models]

    def __call__(self, wanted, student_hidden, teacher_hidden, batch) -> dict:
        """As DenseTokenLosses, from final hidden states: student [B, S, H], teacher [B, S, H_t]
        (or several teachers': teachers/several.SeveralHidden)."""
        positions, targets = self.objective.token_rows(batch)  # [N], [N]: clm distils where it predicts
        h_s = gather_rows(student_hidden, positions)
        h_t = _gathered(teacher_hidden, positions)
        wanted = [t for t in ("task", "ce", "mse") if t in wanted]
        sums = [student_hidden.new_zeros((), dtype=torch.float32) for _ in wanted]
        for start in range(0, len(positions), self.rows):
            chunk = slice(start, start + self.rows)
            parts = checkpoint(self._chunk, wanted, h_s[chunk], None if h_t is None else h_t[chunk], targets[chunk],
                               use_reentrant=False)
            sums = [total + part for total, part in zip(sums, parts)]
        return dict(zip(wanted, sums))

    def eval_outputs(self, student_hidden, teacher_hidden):
        """Final hidden states as HeadRows: evaluation scores them chunk by chunk too."""
        return self.member_outputs(None, student_hidden, self.student_head), self.member_outputs(None, teacher_hidden)

    def member_outputs(self, j, hidden, head=None):
        """Teacher j's (None: the run's teacher's) final hidden states as HeadRows, for evaluation."""
        if hidden is None:
            return None
        if isinstance(hidden, SeveralHidden):
            return SeveralRows(hidden, self.teacher_heads, self.rows)
        return HeadRows(hidden, head or self.teacher_heads[j or 0], self.rows)

    def _chunk(self, wanted, h_s, h_t, targets):
        s_logits = self.student_head(h_s)[:, : self.objective.columns]  # [rows, V]
        terms = {}
        if "task" in wanted:
            terms["task"] = cross_entropy_sum(s_logits, targets)
        if h_t is not None:
            with torch.no_grad():
                t_logits = _teacher_logits(h_t, self.teacher_heads, self.objective.columns)
            terms.update(self._soft_terms(wanted, s_logits, t_logits))
        return tuple(terms[t] for t in wanted)


def _gathered(teacher_hidden, positions):
    """The teacher's final hidden states at `positions` [N]: [N, H_t], or several teachers'."""
    if teacher_hidden is None:
        return None
    return teacher_hidden.gather(positions) if isinstance(teacher_hidden, SeveralHidden) else gather_rows(teacher_hidden, positions)


def _teacher_logits(h_t, heads: list, columns: int) -> torch.Tensor:
    """[n, columns] logits of gathered teacher rows: its head's, or several teachers' routed or mixed."""
    return h_t.logits(heads, columns) if isinstance(h_t, SeveralHidden) else heads[0](h_t)[:, :columns]


class SeveralRows(HeadRows):
    """Several teachers' final hidden states (SeveralHidden) standing for their routed or mixed
    logits in evaluation, a chunk of rows at a time."""

    def __init__(self, hidden, heads: list, rows: int):
        self.several, self.heads, self.rows = hidden, heads, rows

    def chunks(self, positions: torch.Tensor, columns):
        for start in range(0, len(positions), self.rows):
            part = slice(start, start + self.rows)
            yield part, self.several.gather(positions[part]).logits(self.heads, columns)


class SparseTokenLosses(DenseTokenLosses):
    """From full student logits and the cached SparseTargets of --teacher_logits (clm)."""

    def __call__(self, wanted, student_logits, targets, batch) -> dict:
        terms = {}
        if "task" in wanted:
            terms["task"] = self.objective.task_loss(student_logits, batch)
        if "ce" in wanted:
            positions, _ = self.objective.token_rows(batch)
            s_rows, T = gather_rows(student_logits, positions, self.objective.columns), self.cfg.temperature
            if targets.method == "sampled":
                terms["ce"] = sampled_kl(s_rows, targets.ids, targets.values, targets.entropy, T)
            else:  # k + 1 buckets, already log-probabilities at T: the divergence at T = 1, then the T² factor
                teacher = torch.cat([targets.values, targets.tail.unsqueeze(-1)], dim=-1)
                if targets.rest_as_one:  # the student's buckets tempered as the teacher's were (else its tail outweighs)
                    student = tempered_as_buckets(topk_buckets(s_rows, targets.ids, 1.0), T)
                else:
                    student = topk_buckets(s_rows, targets.ids, T)
                terms["ce"] = self.divergence(student, teacher, 1.0, self.cfg.divergence_beta) * T**2
        return terms


class CrossTokenLosses(DenseTokenLosses):
    """From full logits of a student and a teacher with another tokenizer (objectives/clm_cross.py):
    the student's rows and the teacher rows paired with them. --cross_tokenizer aligned: where the
    two positions end at one character, the divergence between the student's distribution and the
    teacher's given to the student tokens that stand for its tokens (the one spelt alike, else the
    first of its text: data/alignment.first_tokens), at T then T²; ULD at the other pairs. uld:
    ULD at every pair. From a cross-tokenizer cache or a server the teacher is its top k: the ones
    spelt alike are buckets, the rest of its mass one more, and ULD compares the top k ranks and
    the rest's mass."""

    def __call__(self, wanted, student_logits, teacher_logits, batch) -> dict:
        terms = {}
        if "task" in wanted:
            terms["task"] = self.objective.task_loss(student_logits, batch)
        if "ce" in wanted:
            s_rows, t_rows, exact = self.objective.paired_rows(student_logits, teacher_logits, batch)
            if self.cfg.cross_tokenizer == "uld":
                exact = torch.zeros_like(exact)
            T = self.cfg.temperature
            if isinstance(t_rows, SparseTargets):  # a cross-tokenizer cache: the teacher's top k on its own tokens
                mapped = self.objective.teacher_to_student.to(s_rows.device)[t_rows.ids]
                student, teacher = shared_topk_buckets(s_rows[exact], mapped[exact], t_rows.values[exact], t_rows.tail[exact], T)
                rest = topk_uld(s_rows[~exact], t_rows.values[~exact], t_rows.tail[~exact], T)
            else:  # the teacher's distribution given to the student tokens that stand for its tokens
                student = torch.log_softmax(s_rows[exact].float() / T, dim=-1)
                teacher = projected_log_probs(t_rows[exact], self.objective.first.to(s_rows.device), self.objective.columns, T)
                rest = uld(s_rows[~exact], t_rows[~exact], T)
            terms["ce"] = self.divergence(student, teacher, 1.0, self.cfg.divergence_beta) * T**2 + rest
        return terms


def token_losses_for(cfg, objective, student, teacher, student_forward=None):
    """For the teacher source `teacher` (teachers/): SparseTokenLosses for a clm
    cache, CrossTokenLosses for a teacher with another tokenizer, ChunkedTokenLosses with
    --loss_chunk_rows, DenseTokenLosses otherwise.
    `student_forward(inputs, logits)`: the student's logits or final hidden states through its
    wrapped module (FSDP runs a sharded model from its root only)."""
    if getattr(objective, "teacher_tokenizer", None) is not None:
        return CrossTokenLosses(cfg, objective)
    if getattr(teacher, "sparse", False):
        return SparseTokenLosses(cfg, objective)
    if not cfg.loss_chunk_rows:
        return DenseTokenLosses(cfg, objective)
    return ChunkedTokenLosses(cfg, objective, student, teacher, student_forward)


@torch.no_grad()
def checked_head(model, role: str, forward=None):
    """The model's output embeddings, after checking that they alone turn its base model's final
    hidden states into its logits (some heads scale or soft-cap the logits after the matmul).
    `forward(inputs, logits)` runs `model` (default: directly). The head runs after it: FSDP2
    keeps a root's own weights gathered after its forward."""
    head = model.get_output_embeddings()
    forward = forward or (lambda inputs, logits: final_outputs(model, inputs, logits=logits)[0])
    same = head is not None
    if same:
        ids = torch.arange(1, 9, device=head.weight.device).remainder(head.weight.shape[0]).unsqueeze(0)
        was_training = model.training
        model.eval()
        dense = forward({"input_ids": ids}, True)
        chunked = head(forward({"input_ids": ids}, False))
        model.train(was_training)
        same = torch.allclose(dense.float(), chunked.float(), rtol=1e-4, atol=1e-4)
    if not same:
        raise InputError(f"--loss_chunk_rows: the {role}'s logits are not its output embeddings applied to its final hidden "
                         f"states ({type(model).__name__}); use --loss_chunk_rows 0 (dense)")
    return head
