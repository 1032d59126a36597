"""Load the tokenizer, teacher and student, and refuse what cannot be distilled.

Everything goes through `from_pretrained(name)` with a hub name or a local folder; a failure
becomes an InputError that names the flag. Configs are read first (cheap), so that the
sequence limit and the labels are known before any data or weights are loaded.
"""

import hashlib
import inspect
import json
import os
from typing import List, Optional, Tuple

import torch
from transformers import AutoConfig, AutoTokenizer

from distillation.config import DEFAULT_MAX_SEQ_LENGTH, read_json_object
from distillation.errors import InputError
from distillation.offline_logits import TEACHER_CONFIG, TOKENIZER, read_manifest, tokenizer_sha256
from distillation.sharded_loading import build_on_meta, sampled_values

# The student loads as fp32 whatever dtype a checkpoint was saved in: transformers 5 would
# otherwise keep a bf16/fp16 checkpoint's dtype, and AdamW on half-precision weights loses small
# updates (--precision bf16/fp16 mixed precision comes from autocast, over fp32 master weights).
# The frozen teacher has no updates to lose: it loads in --teacher_dtype.
WEIGHTS_DTYPE = torch.float32
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # by config.PRECISIONS name


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    """The dtype torch.autocast runs in under --precision (None: fp32, no autocast)."""
    return None if precision == "fp32" else TORCH_DTYPES[precision]

# Position ids of these families start after the padding id: they read 2 fewer tokens than
# max_position_embeddings says (RoBERTa's 514 positions take 512 tokens).
PADDING_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "data2vec-text", "longformer")


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def load_config(name: str, flag: str):
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{flag}: cannot load a model config from '{name}' ({_first_line(err)})") from None


def load_configs(cfg):
    """(teacher config or None, student config), checked against --teacher_type / --student_type."""
    if cfg.teacher_logits:  # the cache keeps its teacher's config: labels, vocabulary, positions
        teacher = load_config(os.path.join(cfg.teacher_logits, TEACHER_CONFIG), "--teacher_logits")
    else:
        teacher = load_config(cfg.teacher_name, "--teacher_name") if cfg.teacher_name else None
    if cfg.student_name:
        student = load_config(cfg.student_name, "--student_name")
    elif os.path.isdir(cfg.student_config):
        student = load_config(cfg.student_config, "--student_config")
    else:
        values = read_json_object(cfg.student_config, "--student_config")
        model_type = values.pop("model_type", None) or cfg.student_type
        if model_type is None:
            raise InputError(f"--student_config: '{cfg.student_config}' has no 'model_type'; give --student_type (e.g. distilbert)")
        try:
            student = AutoConfig.for_model(model_type, **values)
        except (ValueError, TypeError) as err:
            raise InputError(f"--student_config: {_first_line(err)}") from None
    for flag, wanted, config in (("--teacher_type", cfg.teacher_type, teacher), ("--student_type", cfg.student_type, student)):
        if wanted and config is not None and config.model_type != wanted:
            raise InputError(f"{flag} {wanted}: the {flag[2:-5]} is a '{config.model_type}' model")
    return teacher, student


def max_positions(config) -> Optional[int]:
    """The longest input a model config accepts (None when it does not say)."""
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if n and config.model_type in PADDING_OFFSET_POSITIONS:
        n -= (config.pad_token_id or 0) + 1
    return n


def sequence_limit(cfg, tokenizer, teacher_config, student_config) -> int:
    """--max_seq_length as given (refused beyond what the teacher, the student or the tokenizer
    accepts), else the objective's default lowered to that."""
    limits = {"the teacher": teacher_config and max_positions(teacher_config), "the student": max_positions(student_config)}
    if 0 < (tokenizer.model_max_length or 0) < 1_000_000:  # unset tokenizers say ~1e30
        limits["the tokenizer"] = tokenizer.model_max_length
    limits = {who: n for who, n in limits.items() if n}
    if cfg.max_seq_length is not None:
        for who, n in limits.items():
            if cfg.max_seq_length > n:
                raise InputError(f"--max_seq_length {cfg.max_seq_length}: {who} accepts at most {n} tokens")
        return cfg.max_seq_length
    return min([DEFAULT_MAX_SEQ_LENGTH[cfg.objective], *limits.values()])


def load_tokenizer(cfg):
    for flag, name in (("--tokenizer_name", cfg.tokenizer_name), ("--teacher_name", cfg.teacher_name), ("--student_name", cfg.student_name)):
        if name:
            break
    else:
        raise InputError("--tokenizer_name is required when neither --teacher_name nor --student_name is given")
    return _read_tokenizer(name, flag)


def load_tokenizers(cfg):
    """(the run's tokenizer: the student's, the teacher's when it has another one, else None).
    A clm teacher has another tokenizer when --teacher_tokenizer says so, when the teacher's
    own and a --student_name's own (no --tokenizer_name) hold different vocabularies, or when a
    --teacher_logits cache kept its offsets and was made with another tokenizer."""
    if cfg.teacher_logits and cfg.objective == "clm":  # a cache made with its offsets serves a student of any tokenizer
        student, manifest = load_tokenizer(cfg), read_manifest(cfg.teacher_logits)
        if not manifest.get("offsets") or manifest.get("tokenizer_sha256") == tokenizer_sha256(student):
            return student, None
        teacher = _read_tokenizer(os.path.join(cfg.teacher_logits, TOKENIZER), "--teacher_logits")
    elif cfg.teacher_tokenizer:
        flag, name = ("--tokenizer_name", cfg.tokenizer_name) if cfg.tokenizer_name else ("--student_name", cfg.student_name)
        if not name:
            raise InputError("--teacher_tokenizer: give the student's tokenizer too (--tokenizer_name, or a --student_name with its own)")
        student, teacher = _read_tokenizer(name, flag), _read_tokenizer(cfg.teacher_tokenizer, "--teacher_tokenizer")
    else:
        teacher = load_tokenizer(cfg)  # the teacher's own, where there is a teacher
        own = cfg.objective == "clm" and cfg.teacher_name and cfg.student_name and not cfg.tokenizer_name
        student = _own_tokenizer(cfg.student_name) if own else None
        if student is None:
            return teacher, None
    return (student, None) if student.get_vocab() == teacher.get_vocab() else (student, teacher)


def _own_tokenizer(name: str):
    """The tokenizer in a model's folder, or None where it has none."""
    try:
        return _read_tokenizer(name, "--student_name")
    except InputError:
        return None


def _read_tokenizer(name: str, flag: str):
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{flag}: cannot load a tokenizer from '{name}' ({_first_line(err)})") from None
    if not has_vocabulary(tokenizer):  # every word would be unknown
        raise InputError(f"{flag}: '{name}' has no tokenizer files (its tokenizer holds only its {len(tokenizer)} special tokens); "
                         "give --tokenizer_name")
    if tokenizer.pad_token is None:
        # Causal LMs ship without a pad token; padding positions are masked out anyway.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def task_class(objective, config, who: str):
    """The class `objective` trains for `config`'s model type, which `from_pretrained` builds (a
    BertConfig's for sequence_classification: BertForSequenceClassification). InputError naming
    `who` when transformers has none (no DistilBERT is a causal LM)."""
    auto = objective.auto_model_class
    try:
        return auto._model_mapping[type(config)]  # the Auto class's own lookup
    except KeyError:
        head = auto.__name__.removeprefix("AutoModelFor")
        raise InputError(f"{who} is a '{config.model_type}' model, which transformers has no {head} class of: "
                         f"--objective {objective.name} cannot train it") from None


def has_vocabulary(tokenizer) -> bool:
    """False for what transformers builds from a model folder without tokenizer files: a tokenizer
    of its special tokens alone, which is no tokenizer of the model."""
    return len(tokenizer) > len(tokenizer.all_special_tokens)


def load_teacher(cfg, objective, config, on_meta: bool = False):
    """The frozen teacher in eval mode and --teacher_dtype, or None for plain training. A teacher
    must be complete: a head initialised at random (e.g. a bare encoder loaded for classification)
    would teach noise. `on_meta`: built on the meta device when its files hold all of it, to be
    read shard by shard once sharded (sharded_loading.py)."""
    if not cfg.teacher_name:
        return None
    teacher = on_meta and build_on_meta(objective.auto_model_class, cfg.teacher_name, config, TORCH_DTYPES[cfg.teacher_dtype])
    if teacher:
        return teacher.eval().requires_grad_(False)
    teacher, info = objective.auto_model_class.from_pretrained(
        cfg.teacher_name, config=config, dtype=TORCH_DTYPES[cfg.teacher_dtype], output_loading_info=True)
    missing = sorted(info["missing_keys"])
    if missing:
        raise InputError(
            f"--teacher_name: '{cfg.teacher_name}' has no trained weights for {', '.join(missing[:3])}"
            f"{f' (+{len(missing) - 3} more)' if len(missing) > 3 else ''}: a {objective.name} teacher needs its trained "
            f"{objective.auto_model_class.__name__.removeprefix('AutoModelFor')} head (fine-tune it first: docs/classification.md)"
        )
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def load_student(cfg, objective, train_dataset, config, on_meta: bool = False) -> Tuple[torch.nn.Module, List[str]]:
    """(student, names of its weights initialised at random), from --student_name (pretrained)
    or --student_config (random init, or --student_pretrained_weights). `on_meta`: as load_teacher."""
    overrides = objective.student_config_overrides(train_dataset)
    if cfg.student_name and _has_head(config, objective):
        # A student that already carries this task's head keeps its size (check_models
        # refuses a mismatch); it only takes the label names when they fit.
        overrides = {k: v for k, v in overrides.items() if k != "num_labels" and len(v) == config.num_labels}
    for key, value in overrides.items():
        setattr(config, key, value)
    student = on_meta and cfg.student_name and build_on_meta(objective.auto_model_class, cfg.student_name, config, WEIGHTS_DTYPE)
    if student:
        return student, []
    if cfg.student_name:
        student, info = objective.auto_model_class.from_pretrained(
            cfg.student_name, config=config, dtype=WEIGHTS_DTYPE, output_loading_info=True)
        return student, sorted(info["missing_keys"])
    student = objective.auto_model_class.from_config(config, dtype=WEIGHTS_DTYPE)
    if cfg.student_pretrained_weights:
        load_weights(student, cfg.student_pretrained_weights)
        return student, []
    return student, ["all (--student_config)"]


def _has_head(config, objective) -> bool:
    head = objective.auto_model_class.__name__.replace("AutoModel", "")
    return any(arch.endswith(head) for arch in (config.architectures or []))


def load_weights(model, path: str) -> None:
    """--student_pretrained_weights: every tensor of `model` must come from `path` (a .pth/.bin/
    .safetensors file or a save_pretrained folder), with its shape; tied copies count as loaded."""
    state = _read_state_dict(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise InputError(f"--student_pretrained_weights: '{path}' does not fit the student ({_first_line(err)})") from None
    if unexpected:
        raise InputError(f"--student_pretrained_weights: '{path}' has weights the student lacks, e.g. '{unexpected[0]}'")
    tensors = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
    loaded = {tensors[k].data_ptr() for k in state if k in tensors}
    missing = [k for k in missing if tensors[k].data_ptr() not in loaded]
    if missing:
        raise InputError(
            f"--student_pretrained_weights: '{path}' lacks {len(missing)} of the student's tensors "
            f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); they would stay random"
        )


def _read_state_dict(path: str) -> dict:
    from safetensors.torch import load_file

    if os.path.isdir(path):
        names = [n for n in ("model.safetensors", "pytorch_model.bin") if os.path.isfile(os.path.join(path, n))]
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return {k: v for shard in shards for k, v in load_file(os.path.join(path, shard)).items()}
        if not names:
            raise InputError(f"--student_pretrained_weights: '{path}' holds no model.safetensors or pytorch_model.bin")
        path = os.path.join(path, names[0])
    if not os.path.isfile(path):
        raise InputError(f"--student_pretrained_weights: no such file '{path}'")
    try:
        if path.endswith(".safetensors"):
            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)  # runs no code from the file
    except Exception as err:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(f"--student_pretrained_weights: cannot read '{path}' ({_first_line(err)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"--student_pretrained_weights: '{path}' is not a state dict (name -> tensor)")
    return state


def check_pair(teacher, student, tokenizer, teacher_tokenizer=None) -> None:
    """Teacher and student (either may be None) must both cover the tokenizer's ids (the teacher
    its own tokenizer's, where it has another). Their
    embedding tables may be padded to different sizes past it (Qwen2.5-7B has 152,064 rows,
    Qwen2.5-1.5B 151,936, over one tokenizer of 151,665 tokens): only the first len(tokenizer)
    logits are distilled and scored (Objective.columns)."""
    n_tok = len(tokenizer)
    if teacher_tokenizer is not None:
        if teacher is not None and teacher.config.vocab_size < len(teacher_tokenizer):
            raise InputError(f"the teacher has vocab_size={teacher.config.vocab_size}, its tokenizer {len(teacher_tokenizer)} tokens "
                             "(--teacher_name, --teacher_tokenizer)")
        teacher = None
    sizes = {who: model.config.vocab_size for who, model in (("the teacher", teacher), ("the student", student)) if model is not None}
    if any(size < n_tok for size in sizes.values()):
        have = ", ".join(f"{who} has vocab_size={size}" for who, size in sizes.items())
        raise InputError(f"{have}, the tokenizer {n_tok} tokens: teacher and student must share the tokenizer's vocabulary "
                         "and cover all of it (--teacher_name, --student_name/--student_config, --tokenizer_name)")


def check_tokenizers(cfg, tokenizer) -> None:
    """A pretrained student with its own tokenizer must use the run's vocabulary (--tokenizer_name's,
    else the teacher's); one without tokenizer files reads the run's ids."""
    if not (cfg.teacher_name and cfg.student_name):
        return
    try:
        other = AutoTokenizer.from_pretrained(cfg.student_name)
    except (OSError, ValueError, KeyError):
        return
    if has_vocabulary(other) and other.get_vocab() != tokenizer.get_vocab():
        used = "--tokenizer_name" if cfg.tokenizer_name else "--teacher_name"
        raise InputError(f"--student_name has a different vocabulary from {used}: teacher and student must share a tokenizer")


def model_identity(model) -> str:
    """`config <sha>, weights <sha>`: tells two models apart by their config and by up to 4,096
    evenly spaced values of every tensor (fine-tuning moves every weight), without hashing
    gigabytes. The same for a model wherever its folder lies, whole or sharded."""
    config = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
    weights = hashlib.sha256()
    state = model.state_dict()
    values = sampled_values(state)  # a sharded model's too (a collective then)
    for name, tensor in sorted(state.items()):
        weights.update(f"{name}{tuple(tensor.shape)}".encode())
        weights.update(values[name].numpy().tobytes())
    config_sha = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    return f"config {config_sha[:16]}, weights {weights.hexdigest()[:16]}"


def final_outputs(model, inputs: dict, with_hidden: bool = False, logits: bool = True):
    """(the logits, or with `logits=False` the base model's final hidden states [B, S, H] that the
    LM head would turn into them; the model's output, for its hidden states)."""
    out = (model if logits else model.base_model)(**inputs, output_hidden_states=with_hidden)
    return (out.logits if logits else out.last_hidden_state), out


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
