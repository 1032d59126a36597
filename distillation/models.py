"""Load the tokenizer, teacher and student, and refuse pairs that cannot be distilled.

Everything goes through `from_pretrained(name)` with a hub name or a local folder; a
failure becomes an InputError that names the flag.
"""

import inspect
import os

import torch
from transformers import AutoConfig, AutoTokenizer

from distillation.config import read_json_object
from distillation.errors import InputError


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def load_config(name: str, flag: str):
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{flag}: cannot load a model config from '{name}' ({_first_line(err)})") from None


def load_tokenizer(cfg):
    for flag, name in (("--tokenizer_name", cfg.tokenizer_name), ("--teacher_name", cfg.teacher_name), ("--student_name", cfg.student_name)):
        if name:
            break
    else:
        raise InputError("--tokenizer_name is required when neither --teacher_name nor --student_name is given")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{flag}: cannot load a tokenizer from '{name}' ({_first_line(err)})") from None
    if tokenizer.pad_token is None:
        # Causal LMs ship without a pad token; padding positions are masked out anyway.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_teacher(cfg, objective):
    """The frozen teacher in eval mode, or None for plain fine-tuning."""
    if not cfg.teacher_name:
        return None
    load_config(cfg.teacher_name, "--teacher_name")
    teacher = objective.auto_model_class.from_pretrained(cfg.teacher_name)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def load_student(cfg, objective, train_dataset):
    """The student, from --student_name (pretrained) or --student_config (random init)."""
    overrides = objective.student_config_overrides(train_dataset)
    if cfg.student_name:
        config = load_config(cfg.student_name, "--student_name")
        if _has_head(config, objective):
            # A student that already carries this task's head keeps its size (check_models
            # refuses a mismatch); it only takes the label names when they fit.
            overrides = {k: v for k, v in overrides.items() if k != "num_labels" and len(v) == config.num_labels}
        for key, value in overrides.items():
            setattr(config, key, value)
        return objective.auto_model_class.from_pretrained(cfg.student_name, config=config)
    config = _config_from_json(cfg.student_config, cfg.student_type)
    for key, value in overrides.items():
        setattr(config, key, value)
    student = objective.auto_model_class.from_config(config)
    if cfg.student_pretrained_weights:
        _load_weights(student, cfg.student_pretrained_weights)
    return student


def _has_head(config, objective) -> bool:
    head = objective.auto_model_class.__name__.replace("AutoModel", "")
    return any(arch.endswith(head) for arch in (config.architectures or []))


def _config_from_json(path: str, model_type):
    values = read_json_object(path, "--student_config")
    model_type = values.pop("model_type", None) or model_type
    if model_type is None:
        raise InputError(f"--student_config: '{path}' has no 'model_type'; give --student_type (e.g. distilbert)")
    try:
        return AutoConfig.for_model(model_type, **values)
    except ValueError as err:
        raise InputError(f"--student_config: {_first_line(err)}") from None


def _load_weights(model, path: str) -> None:
    if not os.path.isfile(path):
        raise InputError(f"--student_pretrained_weights: no such file '{path}'")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise InputError(f"--student_pretrained_weights: '{path}' has weights the student lacks, e.g. '{unexpected[0]}'")


def check_pair(teacher, student, tokenizer) -> None:
    """Teacher and student must read the same token ids."""
    n_tok = len(tokenizer)
    if student.config.vocab_size < n_tok:
        raise InputError(f"the student's vocab_size={student.config.vocab_size} is smaller than the tokenizer's {n_tok} tokens")
    if teacher is not None and teacher.config.vocab_size != student.config.vocab_size:
        raise InputError(
            f"--teacher_name has vocab_size={teacher.config.vocab_size} but the student has "
            f"vocab_size={student.config.vocab_size}: teacher and student must share a vocabulary"
        )


def check_tokenizers(cfg, tokenizer) -> None:
    """A pretrained student with its own tokenizer must use the teacher's vocabulary."""
    if not (cfg.teacher_name and cfg.student_name):
        return
    try:
        other = AutoTokenizer.from_pretrained(cfg.student_name)
    except (OSError, ValueError, KeyError):
        return  # no tokenizer beside the student: it reads the teacher's ids
    if other.get_vocab() != tokenizer.get_vocab():
        raise InputError("--student_name has a different vocabulary from --teacher_name: teacher and student must share a tokenizer")


def forward_inputs(model) -> set:
    """Names of the inputs `model.forward` accepts (a DistilBERT takes no token_type_ids)."""
    return set(inspect.signature(model.forward).parameters)


def freeze_embeddings(student, positions: bool, token_types: bool) -> None:
    """--freeze_pos_embs / --freeze_token_type_embds, found by name in any family (the
    reference silently did nothing for DistilBERT)."""
    for flag, wanted, keys in (
        ("--freeze_pos_embs", positions, ("position_embeddings", "wpe")),
        ("--freeze_token_type_embds", token_types, ("token_type_embeddings",)),
    ):
        if not wanted:
            continue
        params = [p for name, p in student.named_parameters() if any(k in name.split(".") for k in keys)]
        if not params:
            raise InputError(f"{flag}: the student ({student.config.model_type}) has no such learned embeddings")
        for p in params:
            p.requires_grad_(False)
