"""torchrun's environment, the process group, and the few collectives the Distiller uses.

One code path for 1 and N processes: without torchrun the world has size 1 and every
collective is a no-op. nccl on CUDA, gloo on CPU; a timeout bounds how long a rank waits
for a dead peer (torchrun also tears the others down when one rank exits non-zero).
"""

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist

from distillation.errors import InputError


@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(timeout_minutes: float = 30.0, n_gpu: Optional[int] = None) -> DistEnv:
    """Read RANK/LOCAL_RANK/WORLD_SIZE (set by torchrun) and join the process group.

    `n_gpu` is the reference's flag: 0 trains on the CPU even where CUDA is present; N >= 1
    must be the number of processes torchrun starts on this node, one per GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if n_gpu:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        if not torch.cuda.is_available():
            raise InputError(f"--n_gpu {n_gpu}: no CUDA device is visible; --n_gpu 0 trains on the CPU")
        if n_gpu != per_node:
            raise InputError(f"--n_gpu {n_gpu}: torchrun started {per_node} process(es) on this node; launch "
                             f"`torchrun --nproc_per_node={n_gpu} scripts/train.py ...` (one process per GPU)")
    if torch.cuda.is_available() and n_gpu != 0:
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise InputError(f"torchrun started {int(os.environ.get('LOCAL_WORLD_SIZE', world_size))} processes on this node but "
                             f"{visible} GPU(s) are visible: launch --nproc_per_node={visible}, or pass --n_gpu 0 to train on the CPU")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=timedelta(minutes=timeout_minutes),
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively here: on CUDA, or on a CPU with AVX512-BF16 or AMX. On
    other CPUs (e.g. AVX2 only) they are emulated, ~100x slower than fp32 (157 vs 1.4 s a step
    for a 4-layer BERT with its 30k-word MLM head on a 2-core AVX2 EPYC)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return True  # not Linux: cannot tell, do not warn
    return "avx512_bf16" in flags or "amx_bf16" in flags


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum over ranks, in place (no-op on one process)."""
    if env.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj, env: DistEnv) -> list:
    """Every rank's `obj`, in rank order (a one-element list on one process)."""
    if not env.is_distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, env: DistEnv):
    """Rank 0's `obj` on every rank."""
    if not env.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.is_distributed:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    """Tear the process group down on every rank together: rank 0 may still be writing (final/)
    when another rank is done."""
    if env.is_distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End a torchrun worker here, without the interpreter's finalization. gloo's worker
    threads may still hold a finished collective's tensors when the main thread returns; they
    release them while Python finalizes, cannot take the GIL there, and abort the process
    ("terminate called without an active exception", SIGABRT, after the run's work is done:
    1 run in 6 of a 2-process script that ends with barrier + destroy_process_group on a busy
    2-core machine; pytorch/pytorch#179291). Everything the run writes is closed by now."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def item_seed(seed: int, index: int) -> int:
    """The seed of item `index` (a prompt, an evaluation batch, a step) of a run seeded with `seed`:
    its draws depend on which item it is, not on which process takes it or when, so they are the
    same at any process count and after a resume."""
    return seed * 1_000_003 + index
