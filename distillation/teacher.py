"""Where the teacher's outputs come from: its forward pass, or its logits cached per example.

The Distiller asks `Teacher.outputs(batch, ...)` and never looks at which. Logits may be cached
only when a batch's inputs are a pure function of its examples (the objective says so with
`deterministic_inputs`): MLM re-masks every step, so its teacher logits cannot be reused.
Evaluation inputs never change, so evaluation logits are always computed once.
"""

from typing import Optional

import torch

from distillation.models import final_outputs, forward_inputs


class TeacherCache:
    """Logits of examples by their dataset position (`batch["index"]`)."""

    def __init__(self, n_examples: int):
        self.filled = torch.zeros(n_examples, dtype=torch.bool)
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
        self.logits[index.to(self.logits.device)] = logits
        self.filled[index.cpu()] = True


class Teacher:
    """The frozen teacher (or none, for plain training) and its caches: one for the training
    set when `cache_train`, one for the evaluation set when the objective's inputs allow.
    `may_cache=False` (a teacher sharded over ranks) keeps none: every rank must run each forward."""

    def __init__(self, model, objective, device, n_train: int, n_eval: int, cache_train: bool, may_cache: bool = True):
        self.model = model.to(device) if model is not None else None
        self.objective = objective
        self.accepted = forward_inputs(model) if model is not None else set()
        cacheable = may_cache and model is not None and objective.deterministic_inputs
        self.caches = {
            "train": TeacherCache(n_train) if cacheable and cache_train else None,
            "eval": TeacherCache(n_eval) if cacheable and n_eval else None,
        }

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
            if cached is not None:
                return cached, None
        inputs = {k: v for k, v in self.objective.model_inputs(batch).items() if k in self.accepted}
        first, out = final_outputs(self.model, inputs, with_hidden, logits)
        if cache is not None:
            cache.put(batch["index"], first)
        return first, (out.hidden_states[1:] if with_hidden else None)

    def parameters(self) -> Optional[int]:
        return sum(p.numel() for p in self.model.parameters()) if self.model is not None else None
