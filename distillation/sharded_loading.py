"""Sharded loading: under --strategy fsdp on N > 1 processes each process reads only its shards.

Loading a model whole on every process before sharding it costs N copies of it in host memory
(an 8B teacher in bf16: 16 GB a process, 128 GB on an 8-GPU node) and a whole copy on each
device. Instead, a model whose every weight lies in its folder's safetensors checkpoint is
1. built on the meta device (shapes only, no memory: `build_on_meta`),
2. sharded by FSDP2 as any other model (parallel.FSDPStrategy),
3. given empty local shards (`to_empty`) and filled by torch.distributed.checkpoint's
   HuggingFaceStorageReader, which reads each shard's rows straight from the files and casts
   them into the shard's dtype (`fill`).
The checkpoint is what transformers' from_pretrained reads: model.safetensors, else the files
model.safetensors.index.json names, each tensor from the file it names; any other *.safetensors
beside them (Mistral's consolidated.safetensors, the same weights again) is ignored.
Tied weights are one parameter before sharding, so they stay one. Non-persistent buffers
(rotary frequencies, position ids) are in no file: transformers' own `_init_weights` computes
them, as its from_pretrained does. Tensors that were real before sharding (a hidden-loss
projection) are copied back into their shards.

A model that cannot be read this way (weights missing from the files, random init, LoRA, no
safetensors) loads whole as before; the run's first lines say which way each model came.
"""

import json
import os
from typing import Dict, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader
from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.tensor import DTensor, distribute_tensor
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

SOURCE = "_distil_safetensors"  # attribute of a model built on meta: the folder its weights come from


def safetensors_folder(name: str) -> Optional[str]:
    """The local folder holding `name`'s safetensors checkpoint (a hub name's cached snapshot of it,
    its other files left out), or None."""
    folder = name
    if not os.path.isdir(name):
        try:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(name, allow_patterns=["*.json", SAFE_WEIGHTS_NAME])
            if weight_map(folder) is None and os.path.isfile(os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)):
                folder = snapshot_download(name, allow_patterns=["*.json", *_index(folder).values()])
        except Exception:  # noqa: BLE001 - no snapshot: the whole load reports what is wrong
            return None
    return folder if weight_map(folder) is not None else None


def _index(folder: str) -> Dict[str, str]:
    with open(os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)) as f:
        return json.load(f)["weight_map"]


def weight_map(folder: str) -> Optional[Dict[str, str]]:
    """{tensor name: the file holding it} of the checkpoint in `folder`, by from_pretrained's rule
    (model.safetensors, else the index's files); None when a file is missing or there is none."""
    from safetensors import safe_open

    if os.path.isfile(os.path.join(folder, SAFE_WEIGHTS_NAME)):
        with safe_open(os.path.join(folder, SAFE_WEIGHTS_NAME), framework="pt") as f:
            return dict.fromkeys(f.keys(), SAFE_WEIGHTS_NAME)
    if not os.path.isfile(os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)):
        return None
    files = _index(folder)
    return files if all(os.path.isfile(os.path.join(folder, file)) for file in set(files.values())) else None


class _Files(FileSystem):
    """The folder as holding `files` only: HuggingFaceStorageReader reads every *.safetensors it lists."""

    def __init__(self, files):
        super().__init__()
        self.files = set(files)

    def ls(self, path):
        return [p for p in super().ls(path) if os.path.basename(p) in self.files]


def _reader(folder: str, files) -> HuggingFaceStorageReader:
    reader = HuggingFaceStorageReader(folder)
    reader.fs = _Files(files)
    return reader


def build_on_meta(model_class, name: str, config, dtype: torch.dtype) -> Optional[torch.nn.Module]:
    """`model_class` of `config` on the meta device, marked to be filled from `name`'s safetensors
    once sharded; None when the files do not hold every weight under the model's own names (old
    checkpoints with renamed keys, a head to initialise): that model loads whole."""
    folder = safetensors_folder(name)
    if folder is None:
        return None
    with torch.device("meta"):
        model = model_class.from_config(config, dtype=dtype)
    keys = weight_map(folder)
    names_of = {}  # tied weights: one tensor under several names, one of which must be in the files
    for key, tensor in model.state_dict(keep_vars=True).items():
        names_of.setdefault(id(tensor), []).append(key)
    if not all(any(k in keys for k in names) for names in names_of.values()):
        return None
    setattr(model, SOURCE, folder)
    return model


def pending(module: torch.nn.Module) -> bool:
    """Does `module` hold a model still on meta, to be filled after sharding?"""
    return any(getattr(m, SOURCE, None) for m in module.modules())


def real_tensors(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The parameters and buffers of `module` that hold values (not meta), by name: taken before
    sharding, put back by `fill`."""
    named = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    return {name: t.detach() for name, t in named if not t.is_meta}


@torch.no_grad()
def fill(module: torch.nn.Module, real: Dict[str, torch.Tensor], device: torch.device) -> None:
    """Give the sharded `module` local storage on `device` and its values: `real` copied back,
    buffers computed, every pending model's shards read from its files (a collective)."""
    module.to_empty(device=device)
    params = dict(module.named_parameters(remove_duplicate=False))
    for name, value in real.items():
        target = params[name] if name in params else module.get_buffer(name)
        if isinstance(target, DTensor):
            value = distribute_tensor(value.to(device), target.device_mesh, target.placements).to_local()
            target = target.to_local()
        target.copy_(value)
    for model in [m for m in module.modules() if getattr(m, SOURCE, None)]:
        _init_buffers(model)
        folder = getattr(model, SOURCE)
        files = weight_map(folder)
        state = {k: v for k, v in model.state_dict().items() if k in files}
        # Block by block: the reader maps each file while it reads, and the pages it touches count
        # as resident until the file is closed; one read of everything would hold this rank's share
        # of every file mapped, beside the shards it fills. Each block reads only the files holding
        # its tensors, as the checkpoint names them.
        for group in _blocks(state):
            dcp.load({k: state[k] for k in group}, storage_reader=_reader(folder, {files[k] for k in group}))
        delattr(model, SOURCE)


def _blocks(keys) -> list:
    """State-dict keys grouped by their block ("model.layers.3.mlp.up_proj.weight" under
    "model.layers.3"), the keys outside any numbered block together."""
    groups = {}
    for key in keys:
        parts = key.split(".")
        block = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        groups.setdefault("" if block is None else ".".join(parts[: block + 1]), []).append(key)
    return list(groups.values())


def _init_buffers(model) -> None:
    """Non-persistent buffers, which no file holds, computed by the model's `_init_weights` (run
    before the weights are read, so any parameter it touches is overwritten). A buffer it leaves
    alone would be garbage: refused."""
    for module in model.modules():
        names = [n for n in module._non_persistent_buffers_set if getattr(module, n, None) is not None]
        if not names:
            continue
        for n in names:
            buffer = getattr(module, n)
            buffer.fill_(float("nan") if buffer.is_floating_point() else torch.iinfo(buffer.dtype).min)
        model._init_weights(module)
        for n in names:
            buffer = getattr(module, n)
            sentinel = buffer.isnan() if buffer.is_floating_point() else buffer == torch.iinfo(buffer.dtype).min
            if sentinel.any():
                raise RuntimeError(
                    f"sharded loading: {type(model).__name__}._init_weights does not compute the buffer "
                    f"'{type(module).__name__}.{n}'; load the model whole with --no-sharded_loading")


def sampled_values(state: Dict[str, torch.Tensor], per_tensor: int = 4096) -> Dict[str, torch.Tensor]:
    """Up to `per_tensor` evenly spaced values of every tensor, flattened (fp32, CPU), the same
    whether a tensor is whole or an FSDP2 DTensor sharded by rows (gathered by all_reduce)."""
    out, sharded = {}, {}
    for name, tensor in state.items():
        numel = tensor.numel()
        index = torch.arange(0, numel, max(1, numel // per_tensor))[:per_tensor]
        if isinstance(tensor, DTensor):
            sharded[name] = (tensor, index)
        else:
            out[name] = tensor.detach().reshape(-1)[index.to(tensor.device)].float().cpu()
    if sharded:
        device = next(iter(sharded.values()))[0].to_local().device  # nccl reduces on the GPU
        rows = torch.tensor([t.to_local().shape[0] for t, _ in sharded.values()], device=device)
        every = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(every, rows)
        first_row = torch.stack(every)[: dist.get_rank()].sum(0).cpu()  # Shard(0): rank r holds the rows after ranks < r
        parts = []
        for (tensor, index), start in zip(sharded.values(), first_row.tolist()):
            local = tensor.to_local().detach().reshape(-1).float().cpu()
            row = tensor.numel() // tensor.shape[0]
            values = torch.zeros(len(index))
            mine = (index >= start * row) & (index < start * row + local.numel())
            values[mine] = local[index[mine] - start * row]
            parts.append(values)
        # Summed as int32 bits: each value comes from the one rank that holds it, exactly (-0.0 too).
        bits = torch.cat(parts).view(torch.int32).to(device)
        dist.all_reduce(bits)
        flat = bits.cpu().view(torch.float32)
        out.update(zip(sharded, flat.split([len(i) for _, i in sharded.values()])))
    return out
