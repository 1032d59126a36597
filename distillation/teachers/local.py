"""The local teacher: a model inside every training process (whole, or sharded under fsdp), whose
logits may be kept per example after their first forward.

Logits may be cached
only when a batch's inputs are a pure function of its examples (the objective says so with
`deterministic_inputs`): MLM re-masks every step, so its teacher logits cannot be reused.
Evaluation inputs never change, so evaluation logits are always computed once.

Under DDP each rank computes the logits of its own batches, and batches are dealt anew every
epoch: a rank's cache alone would serve few of its next epoch's batches (epoch 2 of 3,000
examples in batches of 32: 3 of 47 at 2 processes, 0 of 24 at 4). So at each epoch end every
rank sends the logits it computed to all others (`end_epoch`, [examples, labels] floats: small),
and from epoch 2 on every batch is served from memory at any process count.
"""

from typing import Optional

import torch

from distillation.distributed import all_gather_objects, all_reduce_sum
from distillation.models import final_outputs, forward_inputs


class TeacherCache:
    """Logits of examples by their dataset position (`batch["index"]`)."""

    def __init__(self, n_examples: int):
        self.filled = torch.zeros(n_examples, dtype=torch.bool)
        self.shared = torch.zeros(n_examples, dtype=torch.bool)  # already sent to the other ranks
        self.logits: Optional[torch.Tensor] = None  # [n_examples, ...], allocated on first put

    def get(self, index: torch.Tensor) -> Optional[torch.Tensor]:
        """Logits of the examples `index` [B], or None unless all of them are cached."""
        index = index.cpu()
        if self.logits is None or not bool(self.filled[index].all()):
            return None
        return self.logits[index.to(self.logits.device)]

    def put(self, index: torch.Tensor, logits: torch.Tensor) -> None:
        if self.logits is None:
            self.logits = torch.empty((len(self.filled), *logits.shape[1:]), dtype=logits.dtype, device=logits.device)
        self.logits[index.to(self.logits.device)] = logits.to(self.logits.device)
        self.filled[index.cpu()] = True

    def share(self, env) -> None:
        """Every rank ends up holding what any rank cached (a collective: every rank calls it)."""
        index = (self.filled & ~self.shared).nonzero().squeeze(1)
        mine = (index, self.logits[index.to(self.logits.device)].cpu()) if len(index) else (index, None)
        for index, logits in all_gather_objects(mine, env):
            if logits is not None:
                self.put(index, logits)
        self.shared |= self.filled


class LocalTeacher:
    """The frozen teacher (or none, for plain training) and its caches: one for the training
    set when `cache_train`, one for the evaluation set when the objective's inputs allow.
    `may_cache=False` (a teacher sharded over ranks) keeps none: every rank must run each forward.
    `identity` (models.model_identity, the same whole or sharded) goes into the resume fingerprint."""

    warning = None  # nothing the run's header needs to warn about (a cached teacher may have)
    sparse = False  # outputs are logits
    form = "logits"  # what several routed teachers must share (teachers/several.py)
    members = ()  # one teacher (several.py has several)

    def __init__(self, model, objective, device, n_train: int, n_eval: int, cache_train: bool, may_cache: bool = True,
                 identity: Optional[str] = None):
        self.model = model.to(device) if model is not None else None
        self.device = device
        self.identity = identity
        self.objective = objective
        self.accepted = forward_inputs(model) if model is not None else set()
        cacheable = may_cache and model is not None and objective.deterministic_inputs
        self.caches = {
            "train": TeacherCache(n_train) if cacheable and cache_train else None,
            "eval": TeacherCache(n_eval) if cacheable and n_eval else None,
        }
        self.served = torch.zeros(2, dtype=torch.float64)  # training examples: from the cache, all
        if model is None:
            self.description = None
        elif not may_cache:
            self.description = "computed at every step (the teacher is sharded over processes; --replicate_teacher keeps it whole)"
        elif not objective.deterministic_inputs:
            self.description = f"computed at every step ({objective.cache_refusal})"
        elif not cache_train:
            self.description = "computed at every training step (--cache_teacher_logits off); evaluation's cached"
        else:
            self.description = "cached in memory after the first epoch, on every process; evaluation's too"

    @torch.no_grad()
    def outputs(self, batch, with_hidden: bool = False, split: str = "train", logits: bool = True):
        """(logits [B, ..., C], hidden states of every layer or None) for `batch`; (None, None)
        without a teacher. `logits=False`: the final hidden states [B, S, H] in place of the
        logits (--loss_chunk_rows; never cached)."""
        if self.model is None:
            return None, None
        cache = self.caches[split] if logits else None
        if cache is not None and not with_hidden:
            cached = cache.get(batch["index"])
            if split == "train":
                self.served += torch.tensor([len(batch["index"]) if cached is not None else 0, len(batch["index"])])
            if cached is not None:
                return cached, None
        inputs = {k: v for k, v in self.objective.model_inputs(self.objective.teacher_batch(batch)).items() if k in self.accepted}
        first, out = final_outputs(self.model, inputs, with_hidden, logits)
        if cache is not None:
            cache.put(batch["index"], first)
        return first, (out.hidden_states[1:] if with_hidden else None)

    def next_token_logprobs(self, sequence: list) -> torch.Tensor:
        """[L - 1] the log-probability of each next token of `sequence` (token ids), over the
        tokenizer's tokens: one forward (under fsdp every rank runs it together)."""
        ids = torch.tensor([sequence], device=self.device)
        log_p = self.model(input_ids=ids).logits[0, :-1, : self.objective.columns].float().log_softmax(-1)
        return log_p.gather(-1, ids[0, 1:, None]).squeeze(-1)

    def drawing(self, on_policy):
        """The teacher's own answers (--eval_generate): on_policy.drawing by this model."""
        return on_policy.drawing(self.model, on_policy.strategy.teacher_generation(self.model))

    def prepare(self, group: list, upcoming) -> None:
        """Nothing to ask ahead: outputs computes or reads each micro-batch's when it is needed."""

    def end_epoch(self, env) -> None:
        """At every epoch end, on every rank: pool the ranks' training caches."""
        if self.caches["train"] is not None and env.is_distributed:
            self.caches["train"].share(env)

    def report(self, env) -> dict:
        """For the run summary, summed over ranks (a collective): how many training examples
        the cache served."""
        if self.caches["train"] is None:
            return {}
        hits, seen = all_reduce_sum(self.served.to(env.device), env).tolist()
        return {"teacher_cache": {"training_examples": int(seen), "served_from_cache": int(hits),
                                  "hit_rate": hits / seen if seen else None}}

    def parameters(self) -> Optional[int]:
        return sum(p.numel() for p in self.model.parameters()) if self.model is not None else None
