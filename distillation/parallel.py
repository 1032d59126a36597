"""How the student (and the teacher) are spread over processes: `--strategy ddp|fsdp`.

The Distiller calls one Strategy and never asks which: `wrap` gives the module it trains,
`teacher` places the frozen teacher, `gradient_sync` says whether this micro-batch's backward
reduces gradients (accumulation), `generation` gives the student's `generate` (on-policy
samples, --eval_generate), `full_state` gathers the weights for saving. Checkpoints go
through torch.distributed.checkpoint for both (distillation/checkpoint.py), which reads the
per-parameter shards of either at any world size.

- ddp: DistributedDataParallel. Every process holds the whole student, its gradients, both
  AdamW moments and the whole teacher: 16 bytes a student parameter (fp32) plus the teacher.
- fsdp: FSDP2 (`fully_shard`) on each transformer block and then on the root, so a block's
  parameters are gathered just before it runs and freed after; parameters, gradients and
  AdamW state are sharded: ~16/N bytes a student parameter on N processes. The teacher is
  sharded the same way (no gradients, no optimizer) unless --replicate_teacher. bf16 runs
  blocks in bf16 (MixedPrecisionPolicy) and reduces gradients in fp32. On one process
  there is nothing to shard: fsdp trains the plain module, as ddp does.
  The student's losses are computed inside its forward (hidden.StudentWithProjection), so the
  LM head applied chunk by chunk (--loss_chunk_rows) uses the root's gathered weights; FSDP2
  keeps a root's parameters gathered after its forward (the teacher's too).
  Models built on the meta device (distillation/sharded_loading.py) are sharded first and then
  read shard by shard from their safetensors files: no process holds either model whole.
  Limits: no fp16 (GradScaler's overflow check is per shard); a sharded teacher runs on every
  micro-batch of every rank together, so its logits are not cached.
"""

import contextlib
import functools

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from distillation.sharded_loading import fill, pending, real_tensors


def transformer_blocks(model: torch.nn.Module):
    """The model's repeated blocks: the ModuleList holding the most parameters (bert.encoder.layer,
    model.layers, transformer.h...), found by shape for any architecture. Embeddings and the LM
    head stay with the root, where tied weights meet."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))) if lists else []


class Strategy:
    """ddp; also what one process does under either strategy."""

    name = "ddp"
    sharded = False  # the student's parameters, gradients and AdamW state split over the processes
    shards_teacher = False
    holds = "each process holds the whole student and teacher"  # for the run's header

    def __init__(self, cfg, env):
        self.cfg, self.env = cfg, env
        self.loaded = {}  # role -> how it was loaded, for the run's header (sharded strategies)

    def loads_sharded(self, role: str) -> bool:
        """Should the `role` ("teacher" or "student") be built on meta and read shard by shard?"""
        return False

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` on the device, and the module to run forward/backward through (`model` keeps its
        parameters' names)."""
        model = model.to(self.env.device)
        if not self.env.is_distributed:
            return model
        return DistributedDataParallel(model, device_ids=[self.env.device.index] if self.env.device.type == "cuda" else None)

    def teacher(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.env.device)

    def gradient_sync(self, train_model, sync: bool):
        """Context of one micro-batch's forward and backward: reduce gradients only when `sync`."""
        if sync or not self.env.is_distributed:
            return contextlib.nullcontext()
        return train_model.no_sync()

    @contextlib.contextmanager
    def generation(self, model: torch.nn.Module):
        """The student's `generate` (`model`: the StudentWithProjection the optimizer trains). Each
        process samples alone from the unwrapped student: DDP synchronises nothing in forward."""
        yield model.student.generate

    @contextlib.contextmanager
    def teacher_generation(self, teacher: torch.nn.Module):
        """The teacher's `generate` (--eval_generate: its own answers, the student's yardstick)."""
        yield teacher.generate

    def full_state(self, model: torch.nn.Module) -> dict:
        """`model`'s whole state dict, for the main process to save (called on every rank)."""
        return model.state_dict()


class FSDPStrategy(Strategy):
    name = "fsdp"

    def __init__(self, cfg, env):
        super().__init__(cfg, env)
        self.sharded = env.is_distributed
        self.shards_teacher = self.sharded and not cfg.replicate_teacher
        self.holds = "student, gradients and AdamW state sharded; teacher " + (
            "sharded: its logits are not cached" if self.shards_teacher else "whole on each process")
        bf16 = cfg.precision == "bf16"
        self.policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)

    def loads_sharded(self, role):
        return self.cfg.sharded_loading and (self.shards_teacher if role == "teacher" else self.sharded and not self.cfg.lora_r)

    def _shard(self, model, role):
        """Each transformer block its own FSDP unit, then the root (embeddings, heads, projection).
        A model still on meta is sharded first and then given its values (sharded_loading.fill)."""
        real = real_tensors(model) if pending(model) else None
        self.loaded[role] = ("read shard by shard from its safetensors files" if real is not None else
                             f"loaded whole by each process, then sharded ({self._why_whole(role)})")
        if real is None:
            model.to(self.env.device)
        for block in transformer_blocks(model):
            fully_shard(block, mp_policy=self.policy)
        fully_shard(model, mp_policy=self.policy)
        if real is not None:
            fill(model, real, self.env.device)
        return model

    def _why_whole(self, role: str) -> str:
        cfg = self.cfg
        if not cfg.sharded_loading:
            return "--no-sharded_loading"
        if role == "student" and cfg.lora_r:
            return "LoRA adapters go into a whole model"
        if role == "student" and not cfg.student_name:
            return "--student_config: initialised, not read"
        return "its folder does not hold every weight in safetensors files under the model's own names"

    def wrap(self, model):
        return self._shard(model, "student") if self.sharded else model.to(self.env.device)

    def teacher(self, model):
        return self._shard(model, "teacher") if self.shards_teacher else model.to(self.env.device)

    def gradient_sync(self, train_model, sync: bool):
        if self.sharded:
            train_model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def generation(self, model):
        """Every rank generates in step: each block all-gathers its weights in its own forward, so a
        rank whose answers have all ended keeps running forwards until every rank's have
        (`synced_gpus`). The root's weights (embeddings, LM head) are gathered by one forward of a
        single token through the root: generate calls the inner model, which the root's hooks do not
        wrap, and FSDP2 takes the first module to run forward as its root (a block must not be)."""
        if not self.sharded:
            with super().generation(model) as generate:
                yield generate
            return
        with torch.no_grad():
            model({"input_ids": torch.zeros(1, 1, dtype=torch.long, device=self.env.device)}, logits=False)
        try:
            yield functools.partial(model.student.generate, synced_gpus=True)
        finally:
            model.reshard()  # as the next training forward expects to find it

    @contextlib.contextmanager
    def teacher_generation(self, teacher):
        """A sharded teacher is its own FSDP root (generate calls the root's forward, whose hooks
        gather its weights): only the ranks must keep stepping together (`synced_gpus`)."""
        yield functools.partial(teacher.generate, synced_gpus=True) if self.shards_teacher else teacher.generate

    def full_state(self, model):
        """Gathered from the shards to CPU on the main process (a collective: every rank calls it)."""
        if not self.sharded:
            return model.state_dict()
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def build_strategy(cfg, env) -> Strategy:
    return FSDPStrategy(cfg, env) if cfg.strategy == "fsdp" else Strategy(cfg, env)
