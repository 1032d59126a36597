"""LoRA students (--lora_r > 0, the optional `peft` extra): low-rank adapters in the student's
linear layers (GPT-2's Conv1D included) are all that trains (with a classifier's small task
head); final/ merges them.

peft's `inject_adapter_in_model` puts the LoRA layers into the student in place, so it stays the
transformers model it was: its base model, output embeddings (chunked losses), save_pretrained
and FSDP's per-block wrapping are unchanged. Every other weight is frozen, so gradients and AdamW
state exist for the adapters only (the memory plan counts them). A saved folder holds the merged
weights (each adapted layer's weight plus peft's delta: what `merge_and_unload` gives), a plain
`from_pretrained` model, and the adapters beside it in peft's format
(`adapter/`: `PeftModel.from_pretrained(<the initial student>, "adapter")`).
Checkpoints hold the whole student (frozen weights included): --resume rebuilds the same adapters
and reads them back.
"""

import os
from typing import List

import torch
from safetensors.torch import save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from distillation.errors import InputError
from distillation.parallel import transformer_blocks

ADAPTER_FOLDER = "adapter"
_NAME = "default"  # peft's adapter name
_LINEAR = (nn.Linear, Conv1D)  # Conv1D: GPT-2's linear layers, their weight stored transposed


def _peft():
    try:
        import peft
    except ImportError:
        raise InputError("--lora_r needs the peft package: pip install -e '.[peft]'") from None
    return peft


def default_targets(student: nn.Module) -> List[str]:
    """The full names of every linear layer inside the student's transformer blocks: the attention
    and MLP projections of any family (q_proj ... down_proj, query/key/value/dense, q_lin ... lin2,
    GPT-2's Conv1D c_attn/c_proj/c_fc), never the embeddings, the LM head or a classifier."""
    in_blocks = {id(m) for block in transformer_blocks(student) for m in block.modules()}
    names = [name for name, m in student.named_modules() if isinstance(m, _LINEAR) and id(m) in in_blocks]
    if not names:
        raise InputError(f"--lora_r: the student ({type(student).__name__}) has no linear layers in its blocks; name the "
                         "layers to adapt with --lora_target_modules")
    return names


def lora_config(student: nn.Module):
    """The LoraConfig that add_lora injected into `student`, or None (no --lora_r)."""
    return getattr(student, "peft_config", {}).get(_NAME)


def student_parameters(student: nn.Module) -> int:
    """The student's own parameters, its LoRA adapters left out: what the merged folder holds."""
    return sum(p.numel() for name, p in student.named_parameters() if ".lora_" not in name)


def add_lora(student: nn.Module, cfg, train_head: bool):
    """Inject LoRA into `student` in place and freeze all else (but the task head when
    `train_head`: the parameters outside the base model). Returns peft's LoraConfig."""
    peft = _peft()
    targets = cfg.lora_target_modules.split(",") if cfg.lora_target_modules else default_targets(student)
    # peft's documented setting for GPT-2's Conv1D; it corrects the flag per layer anyway, with a warning.
    fan_in_fan_out = any(isinstance(m, Conv1D) for m in student.modules())
    config = peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
                             fan_in_fan_out=fan_in_fan_out)
    try:
        peft.inject_adapter_in_model(config, student, adapter_name=_NAME)
    except ValueError:  # no module matched --lora_target_modules
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in student.named_modules() if isinstance(m, _LINEAR)})
        raise InputError(f"--lora_target_modules {cfg.lora_target_modules}: no layer of the student has such a name; its "
                         f"linear layers are named {', '.join(linear)}") from None
    _check_mergeable(student)
    base = student.base_model_prefix
    for name, p in student.named_parameters():
        p.requires_grad_(".lora_" in name or (train_head and not name.startswith(base + ".")))
    return config


def _check_mergeable(student: nn.Module) -> None:
    """Refuse adapted layers that merged_state cannot merge into a folder equal to the adapted model:
    peft layer types other than Linear/Conv1D and Embedding, and a weight tied to another layer's
    (a tied embedding and LM head: the merged matrix would carry one layer's update into both)."""
    from peft.tuners import lora

    uses = {}
    for _, p in student.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    for name, layer in student.named_modules():
        if not isinstance(layer, lora.LoraLayer):
            continue
        if type(layer) not in (lora.Linear, lora.Embedding):
            raise InputError(f"--lora_target_modules: {name} is a {type(layer.base_layer).__name__}; LoRA students adapt "
                             "linear layers (Linear, Conv1D) and embeddings only")
        if uses[id(layer.base_layer.weight)] > 1:
            raise InputError(f"--lora_target_modules: {name}'s weight is tied to another layer's (the embeddings and the LM "
                             "head); adapt neither, or a student with tie_word_embeddings false")


def merged_state(state: dict, student: nn.Module) -> tuple:
    """(the student's state dict with every adapter merged into its weight, as the model without
    LoRA names it; the adapter weights, named as peft saves them). `state`: the gathered state dict
    of `student`, the model add_lora adapted (`x.base_layer.weight`, `x.lora_A.default.weight`, ...).
    The delta is peft's get_delta_weight applied to the gathered tensors: under FSDP the live layers
    hold DTensor shards, but their scaling and fan_in_fan_out are plain attributes."""
    peft = _peft()
    from peft.tuners import lora
    from peft.utils import transpose

    merged = {k: v.detach() for k, v in state.items() if ".lora_" not in k}
    for name, layer in student.named_modules():
        if not isinstance(layer, lora.LoraLayer):
            continue
        if isinstance(layer, lora.Embedding):  # A: (r, vocab), B: (dim, r); the weight: (vocab, dim)
            a, b = state[f"{name}.lora_embedding_A.{_NAME}"], state[f"{name}.lora_embedding_B.{_NAME}"]
            fan_in_fan_out = True
        else:
            a, b = state[f"{name}.lora_A.{_NAME}.weight"], state[f"{name}.lora_B.{_NAME}.weight"]
            fan_in_fan_out = layer.fan_in_fan_out
        for leaf in ("weight", "bias"):
            if f"{name}.base_layer.{leaf}" in merged:
                merged[f"{name}.{leaf}"] = merged.pop(f"{name}.base_layer.{leaf}")
        weight = merged[f"{name}.weight"]
        delta = transpose(b.float() @ a.float(), fan_in_fan_out) * layer.scaling[_NAME]
        merged[f"{name}.weight"] = (weight.float() + delta.to(weight.device)).to(weight.dtype)
    adapter = peft.get_peft_model_state_dict(student, state_dict=state, adapter_name=_NAME, save_embedding_layers=False)
    return merged, {"base_model.model." + k: v.detach().cpu().contiguous() for k, v in adapter.items()}


def save_adapter(folder: str, config, adapter: dict, base_model: str) -> None:
    """adapter/ in peft's format (adapter_config.json, adapter_model.safetensors), naming the
    student it adapts (`base_model`: --student_name)."""
    path = os.path.join(folder, ADAPTER_FOLDER)
    config.base_model_name_or_path = base_model
    config.save_pretrained(path)
    save_file({k: v.to(torch.float32) for k, v in adapter.items()}, os.path.join(path, "adapter_model.safetensors"))
