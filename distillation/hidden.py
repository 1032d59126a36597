"""Hidden-state matching: the layer map, the student->teacher projection, and the module
that training (and DDP) wraps: the student plus that projection.

The projection exists only to compare hidden states of different widths; it is trained with
the student but saved beside it (final/projection.safetensors), never inside it, so the
student folder stays a plain `from_pretrained` model.
"""

from typing import List, Optional, Tuple

from torch import nn

from distillation.errors import InputError
from distillation.models import final_outputs, forward_inputs

LayerPairs = List[Tuple[int, int]]


def default_layer_map(n_student: int, n_teacher: int) -> LayerPairs:
    """Student layer i <-> evenly spaced teacher layer, last <-> last (0-based layer outputs)."""
    return [(i, round((i + 1) * n_teacher / n_student) - 1) for i in range(n_student)]


def parse_layer_map(text: str, n_student: int, n_teacher: int) -> LayerPairs:
    """--layer_map: `last` -> [(last, last)] (the reference's cosine loss), `uniform` -> every
    student layer with an evenly spread teacher layer, `0:1,1:3,2:5` -> [(0, 1), (1, 3), (2, 5)]."""
    if text == "last":
        return [(n_student - 1, n_teacher - 1)]
    if text == "uniform":
        return default_layer_map(n_student, n_teacher)
    pairs = []
    for item in text.split(","):
        try:
            s, t = (int(x) for x in item.split(":"))
        except ValueError:
            raise InputError(f"--layer_map: '{item}' is not student:teacher (e.g. 0:1,1:3,2:5), 'last' or 'uniform'") from None
        if not (0 <= s < n_student and 0 <= t < n_teacher):
            raise InputError(
                f"--layer_map: pair {s}:{t} is out of range (student layers 0-{n_student - 1}, teacher layers 0-{n_teacher - 1})"
            )
        if (s, t) in pairs:
            raise InputError(f"--layer_map: pair {s}:{t} is given twice")
        pairs.append((s, t))
    return pairs


def build_projection(student_config, teacher_config, enabled: bool) -> Optional[nn.Linear]:
    """A Linear(student width -> teacher width) when the widths differ, else None."""
    hs, ht = student_config.hidden_size, teacher_config.hidden_size
    if hs == ht:
        return None
    if not enabled:
        raise InputError(
            f"--alpha_hidden_mse/--alpha_cos: student hidden size {hs} differs from the teacher's {ht} "
            "and --no-hidden_projection is set; enable --hidden_projection or set both alphas to 0"
        )
    return nn.Linear(hs, ht)


class StudentWithProjection(nn.Module):
    """What the optimizer trains and DDP, FSDP and --compile wrap: the student, the projection and
    the token losses (token_losses.py), so that one forward holds every use of the student's
    weights, its LM head applied chunk by chunk included (FSDP has them gathered there)."""

    def __init__(self, student: nn.Module, projection: Optional[nn.Linear], student_layers: List[int], token_losses=None):
        super().__init__()
        self.student = student
        self.projection = projection
        self.student_layers = student_layers
        self.token_losses = token_losses  # not a module: the heads it holds are the models' own
        self.accepted = forward_inputs(student)  # the inputs its forward takes (DistilBERT: no token_type_ids)

    def forward(self, inputs: dict, with_hidden: bool = False, logits: bool = True, wanted=None, teacher_out=None, batch=None):
        """(logits, or with `wanted` the token loss terms {term: fp32 sum} against `teacher_out`;
        [hidden states of the mapped student layers, projected] or None). `logits=False`: the
        base model's final hidden states [B, S, H] in place of the logits (--loss_chunk_rows
        applies the LM head chunk by chunk)."""
        first, out = final_outputs(self.student, {k: v for k, v in inputs.items() if k in self.accepted}, with_hidden, logits)
        if wanted is not None:
            first = self.token_losses(wanted, first, teacher_out, batch)
        if not with_hidden:
            return first, None
        hidden = [out.hidden_states[i + 1] for i in self.student_layers]
        if self.projection is not None:
            hidden = [self.projection(h) for h in hidden]
        return first, hidden
