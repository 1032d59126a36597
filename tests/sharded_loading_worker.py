"""Run by test_sharded_loading.py under torchrun (2 processes): builds a teacher/student pair
under --strategy fsdp, loaded sharded or whole, while recording the shape of every tensor that
loading brings into memory, then takes the first optimizer step.

Two recorders, installed before transformers is imported: every read from a safetensors file
(`safe_open(...).get_tensor` and `get_slice(...)[...]`, which from_pretrained and torch's
HuggingFaceStorageReader both use) and, through a TorchDispatchMode, every tensor an operator
allocates on a real device (to_empty, casts; not views). Usage: worker.py <config json> <out json>.
"""

import json
import sys

import safetensors

SHAPES = set()  # every shape loading brought into memory, on this rank
_safe_open = safetensors.safe_open


class _Slice:
    def __init__(self, inner):
        self.inner = inner

    def __getitem__(self, index):
        tensor = self.inner[index]
        SHAPES.add(tuple(tensor.shape))
        return tensor

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _RecordingOpen:
    def __init__(self, *args, **kwargs):
        self.inner = _safe_open(*args, **kwargs)

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)

    def get_slice(self, key):
        return _Slice(self.inner.get_slice(key))

    def get_tensor(self, key):
        tensor = self.inner.get_tensor(key)
        SHAPES.add(tuple(tensor.shape))
        return tensor

    def __getattr__(self, name):
        return getattr(self.inner, name)


safetensors.safe_open = _RecordingOpen

import torch  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402


class _RecordAllocations(TorchDispatchMode):
    """The shape of every new tensor an operator allocates on a real device. Views are not new
    memory (a safetensors slice is a view of the memory-mapped file: only the rows read count,
    and `_Slice` records those); a DTensor's shape is the whole tensor's, its local tensor holds
    the memory."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not any(r.alias_info for r in func._schema.returns):  # views and in-place ops (copy_, set_) allocate nothing
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and not isinstance(t, DTensor) and not t.is_meta:
                    SHAPES.add(tuple(t.shape))
        return out


def main(configs_path, out_path):
    """For each named config in `configs_path` (JSON {name: config}): what loading materialised
    and the first step's loss terms, into `out_path`.<rank> (JSON {name: result})."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from conftest import first_step
    from distillation.config import DistillConfig
    from distillation.distributed import init_distributed, shutdown
    from distillation.parallel import transformer_blocks
    from distillation.pipeline import build
    from transformers import set_seed

    torch.set_num_threads(1)
    with open(configs_path) as f:
        configs = json.load(f)
    env, results = None, {}
    for name, values in configs.items():
        cfg = DistillConfig.from_dict(values)
        env = env or init_distributed(cfg.ddp_timeout_minutes, cfg.n_gpu)
        set_seed(cfg.seed)
        SHAPES.clear()
        with _RecordAllocations():
            distiller, _ = build(cfg, env)
        models = {"teacher": distiller.teacher.model, "student": distiller.model.student}
        # The full shape of every weight matrix (FSDP2 shards each by rows over the processes).
        full = {f"{role}.{n}": tuple(p.shape) for role, m in models.items() for n, p in m.named_parameters() if p.ndim == 2}
        sharded = [n for m in models.values() for n, p in m.named_parameters() if p.ndim == 2 and hasattr(p, "to_local")]
        torch.manual_seed(0)
        terms, _ = first_step(distiller)
        # After a step FSDP2 keeps the teacher's root weights (embeddings, head) gathered, its
        # blocks' sharded: what the memory plan counts (memory_plan.py).
        blocks = {id(p) for block in transformer_blocks(models["teacher"]) for p in block.parameters()}
        gathered = {isinstance(p, DTensor) == (id(p) in blocks) for p in models["teacher"].parameters()}
        student = models["student"]
        results[name] = {"materialised": sorted(n for n, shape in full.items() if shape in SHAPES), "matrices": len(full),
                         "sharded": len(sharded), "loaded": distiller.strategy.loaded, "terms": {k: float(v) for k, v in terms.items()},
                         "tied": student.get_output_embeddings().weight is student.get_input_embeddings().weight,
                         "teacher_identity": distiller.teacher.identity, "teacher_root_gathered": gathered == {True}}
    with open(f"{out_path}.{env.rank}", "w") as f:
        json.dump(results, f)
    shutdown(env)


if __name__ == "__main__":
    main(*sys.argv[1:])
    from distillation.distributed import exit_process

    exit_process(0)  # a torchrun worker ends without finalizing (see exit_process)
