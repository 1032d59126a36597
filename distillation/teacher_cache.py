"""Teacher logits kept per example, so later epochs skip the teacher's forward pass.

Valid only when a batch's inputs are a pure function of its examples (the objective says so
with `deterministic_inputs`) and one distilled row per example (e.g. classification): MLM
inputs are re-masked every step, so its teacher logits cannot be reused.
"""

from typing import Optional

import torch


class TeacherCache:
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
