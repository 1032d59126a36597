"""The memory plan: bytes per process of what a run holds, known before step 1.

Per process, on N processes:
- teacher: its parameters at --teacher_dtype's bytes, /N when sharded (fsdp without
  --replicate_teacher), plus, when sharded, its root's own (embeddings, LM head, final norm)
  whole: FSDP2 keeps a root's weights gathered after its forward, and a teacher has no backward
  to free them (the chunked losses apply its head there). Frozen: no gradients, no optimizer state.
- student: fp32 master weights (4 B a parameter), /N under fsdp.
- gradients: 4 B a trained parameter, /N under fsdp.
- AdamW: its two moments, 8 B a trained parameter, /N under fsdp.
- logits: one micro-batch's (--batch_size x --max_seq_length rows for clm/mlm, --batch_size for
  classification) x the distilled columns, at (2·a + 4·4) bytes a logit: both models' logits in
  the compute dtype (a = 2 under bf16/fp16, 4 in fp32) and, in fp32, both log-probabilities, the
  divergence's terms and the student logits' gradient. --loss_chunk_rows holds that for one
  chunk of rows (plus the final hidden states of both models, 2·a bytes a width a row).
Several teachers (--teachers): a teacher row each, the local ones' parameters side by side; with
--loss_chunk_rows a chunk holds each local teacher's logits, and their final hidden states count.
Activations are not counted (they depend on attention kernels, checkpointing and sequence
length): the plan is a floor, exact for the first four lines (parameter counts read off the
models, or off their configs on the meta device) and an estimate for the logits.
"""

from dataclasses import dataclass
from typing import Optional

from distillation.models import TORCH_DTYPES
from distillation.parallel import transformer_blocks

GIB = 1024**3


@dataclass
class Plan:
    teacher: float
    student: float
    gradients: float
    adamw: float
    logits: float
    teachers: tuple = ()  # several teachers: (name, bytes) of each, summing to `teacher`

    @property
    def total(self) -> float:
        return self.teacher + self.student + self.gradients + self.adamw + self.logits

    def line(self) -> str:
        """One line for a run's header."""
        names = ("teacher", "student", "gradients", "adamw", "logits")
        parts = ", ".join(f"{'AdamW' if name == 'adamw' else name} {size(getattr(self, name))}" for name in names)
        if self.teachers:
            parts = parts.replace(f"teacher {size(self.teacher)}", f"teachers {size(self.teacher)} ("
                                  + ", ".join(f"{name} {size(n)}" for name, n in self.teachers) + ")", 1)
        return f"memory plan per process (activations not counted): {parts}; total {size(self.total)}"


def size(n: float) -> str:
    """Bytes as B, KiB, MiB or GiB, 3 significant figures or more."""
    for unit, scale in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.{2 if n < 10 * scale else 1 if n < 100 * scale else 0}f} {unit}"
    return f"{n:.0f} B"


def memory_plan(teacher_params: int, teacher_dtype: str, student_params: int, trained_params: int, world_size: int,
                shard_student: bool, shard_teacher: bool, precision: str, logit_rows: int, columns: int,
                chunk_rows: int = 0, hidden_sizes: Optional[tuple] = None, teacher_root_params: int = 0, teachers: int = 1) -> Plan:
    """Bytes per process (see the module docstring). `teacher_params` 0 for no teacher (or a
    cache); `logit_rows` per micro-batch; `hidden_sizes` (student, the teachers' summed) with
    `chunk_rows`, whose chunk holds the logits of `teachers` teachers (several, chunked);
    `teacher_root_params`: the teacher's parameters outside its transformer blocks."""
    student_share = world_size if shard_student else 1
    teacher_share = world_size if shard_teacher else 1
    compute = TORCH_DTYPES[precision].itemsize
    rows = min(chunk_rows, logit_rows) if chunk_rows else logit_rows
    models = 1 + (teachers if chunk_rows else 1) if teacher_params else 1
    logits = rows * columns * (models * compute + 4 * 4)
    if chunk_rows and hidden_sizes:
        logits += logit_rows * sum(hidden_sizes[:models]) * compute
    gathered = teacher_root_params if shard_teacher else 0
    return Plan(teacher=(teacher_params / teacher_share + gathered) * TORCH_DTYPES[teacher_dtype].itemsize,
                student=student_params * 4 / student_share,
                gradients=trained_params * 4 / student_share,
                adamw=trained_params * 8 / student_share,
                logits=float(logits))


def plan_of_run(d) -> Plan:
    """The plan of a built run (d: the Distiller), from its loaded models' parameter counts."""
    cfg, teacher = d.cfg, d.teacher.model
    student = d.model.student
    # Language models (objective.columns set: the tokenizer's tokens) have a row of logits a token.
    columns = d.objective.columns or student.config.num_labels
    rows = cfg.batch_size * (cfg.max_seq_length if d.objective.columns else 1)
    # the teachers' final hidden states (the chunked losses): the teacher's, or each of several local ones'
    models = [m.model for m in d.teacher.members if m.model is not None] if d.teacher.members else [teacher] * (teacher is not None)
    hidden = (student.config.hidden_size, sum(m.config.hidden_size for m in models))
    plan = memory_plan(
        teacher_params=d.teacher.parameters() or 0, teacher_dtype=cfg.teacher_dtype or "fp32",
        student_params=sum(p.numel() for p in d.model.parameters()),
        trained_params=sum(p.numel() for p in d.model.parameters() if p.requires_grad),
        world_size=d.env.world_size, shard_student=d.strategy.sharded, shard_teacher=d.strategy.shards_teacher,
        precision=cfg.precision, logit_rows=rows, columns=columns, chunk_rows=cfg.loss_chunk_rows, hidden_sizes=hidden,
        teacher_root_params=root_parameters(teacher) if teacher is not None else 0, teachers=max(len(models), 1))
    if d.teacher.members:  # several teachers side by side: a row each (a served or cached one holds none)
        bytes_of = [memory_plan(m.parameters() or 0, cfg.teacher_dtype or "fp32", 0, 0, d.env.world_size, False,
                                d.strategy.shards_teacher, cfg.precision, 0, 0,
                                teacher_root_params=root_parameters(m.model) if m.model is not None else 0).teacher
                    for m in d.teacher.members]
        plan.teachers = tuple((f"teacher {i + 1}", b) for i, b in enumerate(bytes_of))
        plan.teacher = sum(bytes_of)
    return plan


def root_parameters(model) -> int:
    """Parameters outside the model's transformer blocks (embeddings, heads, final norm): what
    FSDP's root unit holds. Tied weights count once."""
    in_blocks = {id(p) for block in transformer_blocks(model) for p in block.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in in_blocks)
