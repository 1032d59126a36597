"""Tiny language-model assets for the mlm/clm/binarized-data tests: nothing is downloaded.

The corpus follows a small grammar (determiner noun verb adjective, repeated), so a tiny
model learns something in a few dozen steps and a student's held-out loss can be compared
before and after distillation.
"""

import importlib
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast

from conftest import ROOT, VOCAB
from conftest import first_step as _first_step
from distillation.config import DistillConfig
from distillation.objectives import build_objective

DETS, NOUNS, VERBS = ["the", "a", "this"], ["movie", "film", "plot", "actor"], ["is", "was"]
ADJS = ["good", "great", "fine", "fun", "bad", "awful", "boring", "dull"]
CAUSAL_VOCAB = ["<unk>", "<s>", "</s>", "<pad>"] + DETS + NOUNS + VERBS + ADJS + ["it", "Q:", "A:", "say", "why"]


@pytest.fixture
def single_thread():
    """One intra-op thread while a test runs: tiny models gain nothing from more, and on a
    shared, oversubscribed machine OpenMP's spinning threads make each op ~100x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def sentences(n, seed, min_clauses=3, max_clauses=6):
    """`n` lines of 3-6 clauses "det noun verb adj"."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        clauses = [f"{rng.choice(DETS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} {rng.choice(ADJS)}"
                   for _ in range(rng.randint(min_clauses, max_clauses))]
        lines.append(" ".join(clauses))
    return lines


def bert_tokenizer(folder):
    """A WordPiece tokenizer over conftest's VOCAB, saved so AutoTokenizer loads it from `folder`.

    transformers 5 reads the vocabulary from `vocab=`: its `vocab_file=` keyword is silently
    ignored, leaving a tokenizer of the 5 special tokens that maps every word to [UNK]."""
    os.makedirs(folder, exist_ok=True)
    vocab_file = os.path.join(folder, "vocab.txt")
    with open(vocab_file, "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    tok = BertTokenizerFast(vocab=vocab_file)
    tok.save_pretrained(folder)
    return tok


def causal_tokenizer(folder):
    """A whitespace word-level tokenizer with <s>/</s>/<pad>/<unk>, like a causal LM's."""
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(CAUSAL_VOCAB)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def write_binarized(path, tokenizer, lines):
    """The reference's format: a pickled list of uint16 arrays, [CLS]/<s> ids [SEP]/</s>."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    ids = tokenizer(lines, add_special_tokens=False)["input_ids"]
    with open(path, "wb") as f:
        pickle.dump([np.array([start, *x, end], dtype=np.uint16) for x in ids], f)
    return str(path)


def write_counts(path, data_file, vocab_size):
    with open(data_file, "rb") as f:
        tokens = np.concatenate(pickle.load(f))
    with open(path, "wb") as f:
        pickle.dump(np.bincount(tokens, minlength=vocab_size).tolist(), f)
    return str(path)


def config(**values):
    """A config for unit tests of objectives (max_seq_length 64: pipeline.build would set it from the models)."""
    base = {"dump_path": "unused", "data_file": "unused", "alpha_ce": 0.0, "alpha_task": 1.0, "max_seq_length": 64}
    return DistillConfig.from_dict({**base, **values})


def heldout_loss(model, objective, path, batch_size=32):
    """Mean per-token loss of `model` on `path` through the objective's own eval path (the
    same masks every call: the generator is seeded)."""
    dataset = objective.load_dataset(path, "--eval_file")
    generator = torch.Generator().manual_seed(0)
    stats = {}
    model.eval()
    with torch.no_grad():
        for i in range(0, len(dataset), batch_size):
            batch = objective.prepare_batch(objective.collate([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))]), generator)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            for k, v in objective.eval_batch(logits, None, batch).items():
                stats.setdefault(k, []).append(v)
    return objective.eval_metrics({k: torch.cat(v) for k, v in stats.items()})["loss"]


def objective_for(cfg):
    return build_objective(cfg, AutoTokenizer.from_pretrained(cfg.tokenizer_name or cfg.student_name))


def run_script(name, *args, timeout=120):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def call_script(capsys, name, *args):
    """Run a script's main in this process: (exit code, stderr lines)."""
    main = importlib.import_module(f"distillation.cli.{name.removesuffix('.py')}").main
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def first_step(cfg):
    """(the loss terms of the first optimizer step, the gradients it applied), built in this process."""
    from distillation.distributed import DistEnv
    from distillation.pipeline import build

    torch.manual_seed(0)
    return _first_step(build(cfg, DistEnv())[0])


def llama_pair(root, n_train: int, student_layers: int, vocab_padding: int = 0) -> dict:
    """A 2-layer Llama teacher (untied head) and a narrower student with a tied head, over the
    causal tokenizer, both vocabularies `vocab_padding` rows past it, saved under `root` with
    `n_train` training and 20 held-out sentences: {"train", "eval", "teacher", "student"}."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import save_model

    tok = causal_tokenizer(str(root / "tok"))
    (root / "train.txt").write_text("\n".join(sentences(n_train, seed=1)) + "\n")
    (root / "eval.txt").write_text("\n".join(sentences(20, seed=2)) + "\n")
    torch.manual_seed(0)
    paths = {"train": str(root / "train.txt"), "eval": str(root / "eval.txt")}
    for role, hidden, layers, tied in (("teacher", 48, 2, False), ("student", 32, student_layers, True)):
        cfg = LlamaConfig(vocab_size=len(CAUSAL_VOCAB) + vocab_padding, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                          bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=tied)
        paths[role] = save_model(LlamaForCausalLM(cfg), tok, str(root / role))
    return paths


def last_json_at_one_and_two_processes(script_text: str, folder, args, fsdp: bool = False) -> dict:
    """{1: ..., 2: ...}: the last stdout line (JSON) of `script_text` (formatted with root=) run
    with `args` by one process and by torchrun's two; with `fsdp`, also {"fsdp": ...}: two
    processes with --strategy fsdp."""
    import json
    import subprocess
    import sys

    from conftest import ROOT, SUBPROCESS_ENV, TORCHRUN

    script = os.path.join(str(folder), "script.py")
    with open(script, "w") as f:
        f.write(script_text.format(root=ROOT))
    runs = {}
    launches = [(1, [sys.executable], []), (2, TORCHRUN, [])] + [("fsdp", TORCHRUN, ["--strategy", "fsdp"])] * fsdp
    for n, launcher, extra in launches:
        proc = subprocess.run(launcher + [script] + list(map(str, [*args, *extra])), capture_output=True, text=True, timeout=240,
                              env=SUBPROCESS_ENV, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    return runs
