"""Build a student from a teacher: keep some of its Transformer blocks, drop the rest.

Two ways, both from the reference's `scripts/extract*.py`:

- `extract_student`: a student of the teacher's own class (BERT, RoBERTa, DistilBERT,
  GPT-2, Llama) with the chosen blocks; embeddings, final norm and head are copied.
- `bert_to_distilbert`: a BERT's weights mapped into a `DistilBertForMaskedLM`, the way
  DistilBERT itself was initialised (teacher layers 0,2,4,7,9,11 → student 0-5).
"""

import copy
import inspect
import os

import transformers
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, DistilBertConfig, DistilBertForMaskedLM

from distillation.errors import InputError

#: model_types whose block list `find_layer_list` locates and `extract_student` shrinks.
SUPPORTED = ("bert", "roberta", "distilbert", "gpt2", "llama")


def find_layer_list(model):
    """Return `(parent_module, attr_name, blocks)` for the model's list of Transformer blocks.

    The list is found by shape, not by name: the biggest `nn.ModuleList` holding exactly
    `num_hidden_layers` modules (`bert.encoder.layer`, `roberta.encoder.layer`,
    `distilbert.transformer.layer`, `transformer.h`, `model.layers`). Only the model_types in
    `SUPPORTED` are accepted; others may hide layer counts elsewhere in their config.
    """
    config = model.config
    if config.model_type not in SUPPORTED:
        raise InputError(
            f"--teacher: model_type '{config.model_type}' is not supported for layer extraction "
            f"(supported: {', '.join(SUPPORTED)})"
        )
    n_layers = config.num_hidden_layers  # an alias of n_layer (GPT-2) and n_layers (DistilBERT)
    candidates = [
        (sum(p.numel() for p in module.parameters()), name)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == n_layers
    ]
    if not candidates:
        raise InputError(f"--teacher: found no list of {n_layers} layers in this {config.model_type} model")
    name = max(candidates)[1]
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    return parent, attr, getattr(parent, attr)


def default_layers(n_teacher: int, n_student: int) -> list:
    """Teacher layers for an `n_student`-layer student: evenly spread, first and last kept.

    Student layer i takes teacher layer round(i * (n_teacher - 1) / (n_student - 1)), halves
    rounded up: 12→6 gives the reference's 0,2,4,7,9,11 and 6→3 gives 0,3,5. A one-layer
    student keeps layer 0, the one trained on the embeddings it inherits.
    """
    if not 1 <= n_student <= n_teacher:
        raise InputError(f"--layers: cannot pick {n_student} of {n_teacher} teacher layers")
    if n_student == 1:
        return [0]
    span, steps = n_teacher - 1, n_student - 1
    # Integer arithmetic for round-half-up, so the choice never depends on float error.
    return [(2 * i * span + steps) // (2 * steps) for i in range(n_student)]


def parse_layers(text: str) -> list:
    """`"0,2,4"` → `[0, 2, 4]`; anything else is an InputError naming `--layers`."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise InputError(f"--layers: expected comma-separated layer indices like 0,2,4, got '{text}'") from None


def check_layers(layers, n_teacher: int) -> list:
    """The layers as a list, after refusing empty, out-of-range, repeated or unsorted ones."""
    layers = list(layers)
    if not layers:
        raise InputError("--layers: choose at least one teacher layer")
    bad = [i for i in layers if not 0 <= i < n_teacher]
    if bad:
        raise InputError(f"--layers: layer {bad[0]} is out of range; the teacher has layers 0-{n_teacher - 1}")
    if any(a >= b for a, b in zip(layers, layers[1:])):
        raise InputError(f"--layers: indices must be strictly increasing (no repeats), got {layers}")
    return layers


def extract_student(teacher_model, layers) -> nn.Module:
    """A copy of `teacher_model` (same class) keeping only the blocks `layers`, in that order.

    Everything else (embeddings, final norm, task head) is copied as is, and weights tied in
    the teacher stay tied in the student. The teacher is not modified.
    """
    _, _, blocks = find_layer_list(teacher_model)
    layers = check_layers(layers, len(blocks))
    # One shared memo: the kept blocks are copied first, then stand in for the whole list,
    # so dropped blocks are never copied (a big teacher is not held twice in memory) and
    # anything a block shares with the rest of the model stays shared.
    memo = {}
    kept = nn.ModuleList([copy.deepcopy(blocks[i], memo) for i in layers])
    memo[id(blocks)] = kept
    student = copy.deepcopy(teacher_model, memo)
    _renumber(kept, layers)
    _shrink_config(student.config, layers)
    return student


def _renumber(blocks, layers) -> None:
    # Attention modules index the KV cache by `layer_idx`; after dropping blocks it must be
    # the block's new position, as it is when the saved student is loaded again.
    for new, (block, old) in enumerate(zip(blocks, layers)):
        for module in block.modules():
            if getattr(module, "layer_idx", None) is None:
                continue
            module.layer_idx = new
            if getattr(module, "scale_attn_by_inverse_layer_idx", False):
                # GPT-2's optional 1/(layer_idx+1) attention scale is fixed at construction;
                # match what a reload of the saved student computes.
                module.scaling = module.scaling * (old + 1) / (new + 1)


def _shrink_config(config, layers) -> None:
    n_teacher = config.num_hidden_layers
    config.num_hidden_layers = len(layers)  # sets n_layer / n_layers through attribute_map
    # Newer configs list a per-layer attention type (full / sliding); keep the chosen ones.
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and len(layer_types) == n_teacher:
        config.layer_types = [layer_types[i] for i in layers]


# BERT block parameter → DistilBERT block parameter (both prefixed by the layer's path).
_BERT_TO_DISTILBERT_LAYER = {
    "attention.self.query": "attention.q_lin",
    "attention.self.key": "attention.k_lin",
    "attention.self.value": "attention.v_lin",
    "attention.output.dense": "attention.out_lin",
    "attention.output.LayerNorm": "sa_layer_norm",
    "intermediate.dense": "ffn.lin1",
    "output.dense": "ffn.lin2",
    "output.LayerNorm": "output_layer_norm",
}
_BERT_TO_DISTILBERT_HEAD = {
    "cls.predictions.transform.dense": "vocab_transform",
    "cls.predictions.transform.LayerNorm": "vocab_layer_norm",
}


def bert_to_distilbert(bert, layers=None, vocab_transform: bool = True) -> DistilBertForMaskedLM:
    """Map a BERT (`BertForMaskedLM`, `BertForPreTraining` or bare `BertModel`) into a
    `DistilBertForMaskedLM` with the teacher blocks `layers`, as the reference's
    `extract_distilbert.py` does.

    `layers` defaults to `default_layers(n, n // 2)`, the reference's 0,2,4,7,9,11 for a
    12-layer BERT. DistilBERT has no token type embeddings, so BERT's are dropped: the student
    matches BERT exactly only where BERT's token type row 0 is zero. The MLM decoder becomes
    the vocab projector; with `vocab_transform` the head's dense + LayerNorm are copied too,
    otherwise (and for a BERT without MLM head) they keep DistilBERT's fresh initialisation.
    """
    config = bert.config
    if config.model_type != "bert":
        raise InputError(f"--teacher: expected a BERT model, got model_type '{config.model_type}'")
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise InputError("--teacher: DistilBERT has absolute position embeddings only; this BERT uses "
                         f"'{config.position_embedding_type}'")
    n_teacher = config.num_hidden_layers
    layers = check_layers(default_layers(n_teacher, n_teacher // 2) if layers is None else layers, n_teacher)
    student = DistilBertForMaskedLM(DistilBertConfig(
        vocab_size=config.vocab_size,
        max_position_embeddings=config.max_position_embeddings,
        dim=config.hidden_size,
        hidden_dim=config.intermediate_size,
        n_heads=config.num_attention_heads,
        n_layers=len(layers),
        activation=config.hidden_act,
        pad_token_id=config.pad_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
    ))
    source = bert.state_dict()
    prefix = "bert." if any(k.startswith("bert.") for k in source) else ""
    mapping = {
        "embeddings.word_embeddings": "distilbert.embeddings.word_embeddings",
        "embeddings.position_embeddings": "distilbert.embeddings.position_embeddings",
        "embeddings.LayerNorm": "distilbert.embeddings.LayerNorm",
    }
    for new, old in enumerate(layers):
        for src, dst in _BERT_TO_DISTILBERT_LAYER.items():
            mapping[f"encoder.layer.{old}.{src}"] = f"distilbert.transformer.layer.{new}.{dst}"
    target = {
        f"{dst}.{kind}": source[f"{prefix}{src}.{kind}"]
        for src, dst in mapping.items()
        for kind in ("weight", "bias")
        if f"{prefix}{src}.{kind}" in source  # embeddings have no bias
    }
    if "cls.predictions.bias" in source:
        target["vocab_projector.weight"] = source["cls.predictions.decoder.weight"]
        target["vocab_projector.bias"] = source["cls.predictions.bias"]
        if vocab_transform:
            for src, dst in _BERT_TO_DISTILBERT_HEAD.items():
                for kind in ("weight", "bias"):
                    target[f"{dst}.{kind}"] = source[f"{src}.{kind}"]
    missing, unexpected = student.load_state_dict(target, strict=False)
    # Only the head may be left at its initialisation; a missing block weight is a bug.
    assert not unexpected and all(k.startswith("vocab_") for k in missing), (missing, unexpected)
    return student


def load_teacher_config(name: str, model_types=SUPPORTED):
    """The teacher's config, read first so bad flags fail before any weights are loaded."""
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"--teacher: cannot load a model config from '{name}' ({_first_line(err)})") from None
    if config.model_type not in model_types:
        raise InputError(f"--teacher: model_type '{config.model_type}' is not supported here "
                         f"(supported: {', '.join(model_types)})")
    return config


def load_teacher(name: str, config):
    """The teacher as the class its config names (so with its head), else the bare AutoModel."""
    model_class = getattr(transformers, (config.architectures or [""])[0], None) or AutoModel
    try:
        return model_class.from_pretrained(name, config=config)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"--teacher: cannot load the model from '{name}' ({_first_line(err)})") from None


def check_dump_path(path: str, force: bool) -> None:
    """Refuse to write into a file or a non-empty folder unless `--force`."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"--dump_path: '{path}' is a file, not a folder")
    if os.path.isdir(path) and os.listdir(path) and not force:
        raise InputError(f"--dump_path: '{path}' is not empty; add --force to overwrite it")


def save_student(student, dump_path: str, teacher_name: str) -> None:
    """`save_pretrained` the student (safetensors), with the teacher's tokenizer if it has one."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(teacher_name)
    except (OSError, ValueError, KeyError):
        tokenizer = None  # a weights-only teacher folder: the student gets none either
    if tokenizer is not None:
        # A BERT tokenizer beside a DistilBERT would hand it token_type_ids it cannot take;
        # given at load time, the narrower list is saved in tokenizer_config.json.
        accepted = set(inspect.signature(student.forward).parameters)
        names = [n for n in tokenizer.model_input_names if n in accepted]
        if names != list(tokenizer.model_input_names):
            tokenizer = AutoTokenizer.from_pretrained(teacher_name, model_input_names=names)
    os.makedirs(dump_path, exist_ok=True)
    student.save_pretrained(dump_path)
    if tokenizer is not None:
        tokenizer.save_pretrained(dump_path)


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"
