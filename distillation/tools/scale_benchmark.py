"""Per-rank memory and throughput of --strategy ddp and fsdp at real model sizes, 1 and N processes.

The models are built with `from_config` at random init (nothing downloaded) and saved once:
`bert-base`: BERT-base (110M) teaches the 6-layer DistilBERT (66M), MLM; `llama-1b`:
TinyLlama-1.1B's shape teaches the same shape at half depth (11 layers, 0.6B), clm; on random
token sequences of exactly `seq` tokens. Each configuration runs under torchrun through the real pipeline
(`pipeline.build`, `Distiller._step`): one warm-up step, then `steps` timed steps.

Measured on each rank, the maximum over ranks reported:
- params / grads / optimizer MB: the bytes of the tensors this rank holds (a DTensor's local
  shard): parameters after the step, gradients just before the optimizer step (a step
  pre-hook), AdamW state after it. Not computed from a formula: read off the tensors.
- loading peak RSS MB: the process's high-water resident memory once both models are built,
  sharded and filled (before any step): what loading cost. Under fsdp on N > 1 processes the
  models are read shard by shard (sharded_loading.py) unless `loading` is "whole".
- peak RSS MB: the process's high-water resident memory (teacher, activations, framework).
- tokens/s per process; teacher share: the teacher's forward alone, timed on the same
  batches, over the step time.
- MFU: achieved FLOP/s per process over the fp32 matmul peak that process measures (all
  processes timing at once, so they share the cores as in training). FLOPs per token:
  6·N_s + 2·N_t + attention (12·L_s·S·H_s + 4·L_t·S·H_t), N = weights of every Linear
  (blocks and LM head; embedding lookups cost no matmul).

`python -m distillation.tools.scale_benchmark SPEC.json` is the per-rank entry point.
"""

import json
import os
import pickle
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn

from distillation.models import TORCH_DTYPES
from distillation.tools.benchmark import ROOT, matmul_peak

def _bert(seq):
    from transformers import BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

    return BertForMaskedLM(BertConfig(max_position_embeddings=512)), DistilBertForMaskedLM(DistilBertConfig(max_position_embeddings=512))


def _llama(seq):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4,
                 max_position_embeddings=max(seq, 2048), bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=22, **shape)), LlamaForCausalLM(LlamaConfig(num_hidden_layers=11, **shape))


# name -> (objective, vocabulary, special tokens, the two models, the loss weights)
MODELS = {
    "bert-base": ("mlm", 30522, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], _bert,
                  {"alpha_ce": 5.0, "alpha_task": 2.0, "alpha_cos": 1.0}),  # BERT-base (110M) -> DistilBERT (66M)
    "llama-1b": ("clm", 32000, ["<pad>", "<unk>", "<s>", "</s>"], _llama,
                 {"alpha_ce": 0.5, "alpha_task": 0.5}),  # TinyLlama-1.1B's shape -> its 11 even layers' depth (0.6B)
}


def _tokenizer(folder: str, model: str, vocab: int, special: list):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertTokenizerFast, PreTrainedTokenizerFast

    words = special + [f"w{i}" for i in range(vocab - len(special))]
    if model == "bert-base":
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "vocab.txt"), "w") as f:
            f.write("\n".join(words) + "\n")
        return BertTokenizerFast(os.path.join(folder, "vocab.txt"))
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def prepare(out: str, model: str, seq: int, n_examples: int, saved_dtype: str = "fp32") -> dict:
    """Save teacher, student (their weights in `saved_dtype`: released checkpoints are mostly bf16),
    tokenizer and data once under `out/model[-bf16]`; returns their paths."""
    objective, vocab, special, make, _ = MODELS[model]
    root = os.path.join(out, model if saved_dtype == "fp32" else f"{model}-{saved_dtype}")
    paths = {name: os.path.join(root, name) for name in ("teacher", "student")}
    paths["saved_dtype"] = saved_dtype
    paths["data"], paths["counts"] = os.path.join(root, f"data-{seq}.pickle"), os.path.join(root, f"counts-{seq}.pickle")
    if not all(os.path.isdir(paths[name]) for name in ("teacher", "student")):
        tokenizer = _tokenizer(os.path.join(root, "tokenizer"), model, vocab, special)
        torch.manual_seed(0)
        for name, built in zip(("teacher", "student"), make(seq)):
            built.to(TORCH_DTYPES[saved_dtype]).save_pretrained(paths[name])
            tokenizer.save_pretrained(paths[name])
            del built
    if not os.path.isfile(paths["data"]):
        rng = np.random.default_rng(0)
        body = rng.integers(len(special), vocab, size=(n_examples, seq - 2))
        start, end = special.index("[CLS]" if objective == "mlm" else "<s>"), special.index("[SEP]" if objective == "mlm" else "</s>")
        rows = [np.array([start, *row, end], dtype=np.uint16) for row in body]
        with open(paths["data"], "wb") as f:
            pickle.dump(rows, f)
        with open(paths["counts"], "wb") as f:
            pickle.dump(np.bincount(np.concatenate(rows), minlength=vocab).tolist(), f)
    return paths


def run_config(paths: dict, out: str, model: str, strategy: str, processes: int, seq: int, batch_size: int, steps: int,
               threads: int, sharded_loading: bool = True) -> dict:
    """One configuration under torchrun; the per-rank results merged."""
    objective, _, _, _, alphas = MODELS[model]
    loading = "sharded" if strategy == "fsdp" and processes > 1 and sharded_loading else "whole"
    name = (f"{model}-{strategy}-{processes}p-seq{seq}" + ("-whole" if strategy == "fsdp" and processes > 1 and loading == "whole" else "")
            + ("" if paths["saved_dtype"] == "fp32" else f"-{paths['saved_dtype']}-files"))
    mlm = {"token_counts": paths["counts"]} if objective == "mlm" else {}
    spec = {"config": {"objective": objective, "teacher_name": paths["teacher"], "student_name": paths["student"],
                       "data_file": paths["data"], "dump_path": os.path.join(out, name), "max_seq_length": seq,
                       "batch_size": batch_size, "gradient_accumulation_steps": 1, "strategy": strategy, "group_by_size": False,
                       "sharded_loading": sharded_loading, **mlm, **alphas},
            "steps": steps, "seq": seq, "result": os.path.join(out, name + ".rank{rank}.json")}
    spec_file = os.path.join(out, name + ".spec.json")
    with open(spec_file, "w") as f:
        json.dump(spec, f)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ROOT,
           "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "distillation.tools.scale_benchmark", spec_file]
    with open(os.path.join(out, name + ".log"), "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env).returncode
    if code != 0:
        return {"name": name, "model": model, "strategy": strategy, "processes": processes, "seq": seq, "loading": loading,
                "files": paths["saved_dtype"], "failed": f"exit {code}, see {log.name}"}
    ranks = []
    for rank in range(processes):
        with open(spec["result"].format(rank=rank)) as f:
            ranks.append(json.load(f))
    merged = {k: max(r[k] for r in ranks) for k in ("params_mb", "grads_mb", "optimizer_mb", "loading_rss_mb", "peak_rss_mb", "step_s")}
    merged.update({k: sum(r[k] for r in ranks) / processes for k in ("tokens_per_s", "teacher_share", "mfu", "peak_tflop_per_s")})
    merged["student_state_mb"] = merged["params_mb"] + merged["grads_mb"] + merged["optimizer_mb"]
    return {"name": name, "model": model, "strategy": strategy, "processes": processes, "seq": seq, "loading": loading,
            "files": paths["saved_dtype"], "batch_size": batch_size, **merged,
            "flops_per_token": ranks[0]["flops_per_token"]}


# --- one rank ----------------------------------------------------------------------------------
def linear_weights(model) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def local_mb(tensors) -> float:
    """MB of the tensors as this rank holds them (a DTensor's local shard)."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total / 2**20


def rank_main(spec_file: str) -> None:
    from distillation.config import DistillConfig
    from distillation.distributed import barrier, init_distributed
    from distillation.pipeline import build

    with open(spec_file) as f:
        spec = json.load(f)
    cfg = DistillConfig.from_dict(spec["config"])
    env = init_distributed(cfg.ddp_timeout_minutes)
    peak = matmul_peak(torch.float32, 2048)  # every rank at once: they share the cores, as in training
    torch.manual_seed(cfg.seed)
    distiller, _ = build(cfg, env)
    loading_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    student, teacher = distiller.model.student, distiller.teacher.model
    seq = spec["seq"]
    flops = (6 * (linear_weights(student) + 2 * student.config.num_hidden_layers * seq * student.config.hidden_size)
             + 2 * (linear_weights(teacher) + 2 * teacher.config.num_hidden_layers * seq * teacher.config.hidden_size))
    grads = {}

    def measure_grads(*_):
        grads["mb"] = local_mb(p.grad for p in distiller.model.parameters())

    distiller.optimizer.register_step_pre_hook(measure_grads)
    batches = distiller._batches(0)
    groups = [[distiller.objective.collate([distiller.train_dataset[i] for i in b])] for b in batches[: spec["steps"] + 1]]
    distiller._step(groups[0])  # warm-up: allocations, kernel choices
    barrier(env)
    start = time.perf_counter()
    for group in groups[1:]:
        distiller._step(group)
    barrier(env)
    step_s = (time.perf_counter() - start) / spec["steps"]
    tokens = sum(int(g[0]["attention_mask"].sum()) for g in groups[1:])
    barrier(env)
    start = time.perf_counter()
    with torch.no_grad():
        for group in groups[1:]:
            batch = distiller.objective.prepare_batch({k: v.to(distiller.device) for k, v in group[0].items()})
            distiller.teacher.outputs(batch, with_hidden=bool(distiller.layer_pairs))
    barrier(env)
    teacher_s = (time.perf_counter() - start) / spec["steps"]
    optimizer_state = [t for state in distiller.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    tokens_per_s = tokens / (step_s * spec["steps"])
    result = {"params_mb": local_mb(distiller.model.parameters()), "grads_mb": grads["mb"],
              "optimizer_mb": local_mb(optimizer_state), "loading_rss_mb": loading_rss_mb, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "step_s": step_s, "tokens_per_s": tokens_per_s, "teacher_share": teacher_s / step_s,
              "flops_per_token": flops, "peak_tflop_per_s": peak / 1e12, "mfu": tokens_per_s * flops / peak}
    with open(spec["result"].format(rank=env.rank), "w") as f:
        json.dump(result, f)


def format_table(results: list, meta: dict) -> str:
    lines = ["| model | strategy | processes | seq | loading | params MB | grads MB | AdamW MB | student state MB | loading peak RSS MB "
             "| peak RSS MB | tokens/s per process | teacher share | MFU |", "|---|---|---:|---:|---|" + "---:|" * 9]
    for r in results:
        files = r.get("files", "fp32")
        head = (f"| {r['model']}{'' if files == 'fp32' else f' ({files} files)'} | {r['strategy']} | {r['processes']} | {r['seq']} | "
                f"{r.get('loading', 'whole')} |")
        if "failed" in r:
            lines.append(f"{head} failed: {r['failed']} |")
            continue
        loading_rss = f"{r['loading_rss_mb']:.0f}" if "loading_rss_mb" in r else "-"
        lines.append(f"{head} {r['params_mb']:.0f} | {r['grads_mb']:.0f} | "
                     f"{r['optimizer_mb']:.0f} | {r['student_state_mb']:.0f} | {loading_rss} | {r['peak_rss_mb']:.0f} | {r['tokens_per_s']:.1f} | "
                     f"{100 * r['teacher_share']:.0f}% | {100 * r['mfu']:.1f}% |")
    lines.append(f"\n{meta['machine']}; {meta['note']}")
    return "\n".join(lines)


if __name__ == "__main__":
    rank_main(sys.argv[1])


def count_parameters(config):
    """(parameters, of which outside the transformer blocks) of the model a config describes,
    built on the meta device (no memory, no download): the class its `architectures` names, tied
    weights counted once."""
    import transformers

    from distillation.memory_plan import root_parameters

    model_class = getattr(transformers, (config.architectures or ["AutoModel"])[0])
    with torch.device("meta"):
        model = model_class._from_config(config) if hasattr(model_class, "_from_config") else model_class.from_config(config)
    return sum(p.numel() for p in model.parameters()), root_parameters(model)


def plan_table(args) -> str:
    """--plan_only: the memory plan (distillation/memory_plan.py) of each strategy, process count
    and sequence length, in GiB per process, for the two configs; nothing is run."""
    from distillation.memory_plan import GIB, memory_plan

    teacher_config, student_config = args.configs  # read by the CLI's checks
    (teacher, teacher_root), (student, _) = count_parameters(teacher_config), count_parameters(student_config)
    hidden = (student_config.hidden_size, teacher_config.hidden_size)
    teacher_dtype = args.teacher_dtype or args.precision
    lines = [f"teacher {args.teacher_config}: {teacher:,} parameters ({teacher_dtype}); student {args.student_config}: "
             f"{student:,} parameters (fp32 master weights, all trained); "
             f"{'no autocast' if args.precision == 'fp32' else args.precision + ' autocast'}; {args.columns:,} logit columns"
             + (f"; --loss_chunk_rows {args.loss_chunk_rows}" if args.loss_chunk_rows else ""),
             "", "| strategy | processes | seq | batch | teacher | student | gradients | AdamW | logits | total (GiB per process) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for seq in args.seq:
        batch = max(1, args.tokens_per_step // seq)
        for processes in args.processes:
            for strategy in args.strategies:
                fsdp = strategy == "fsdp" and processes > 1
                plan = memory_plan(teacher, teacher_dtype, student, student, processes, fsdp, fsdp and not args.replicate_teacher,
                                   args.precision, batch * seq, args.columns, args.loss_chunk_rows, hidden, teacher_root)
                values = [plan.teacher, plan.student, plan.gradients, plan.adamw, plan.logits, plan.total]
                lines.append(f"| {strategy} | {processes} | {seq} | {batch} | " + " | ".join(f"{v / GIB:.2f}" for v in values) + " |")
    return "\n".join(lines)
