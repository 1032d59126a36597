"""Peak memory and time of the clm token losses: dense logits against --loss_chunk_rows.

The models are Llama configs built with `from_config` (nothing downloaded) at a Llama-3-sized
vocabulary (128,256). What is measured is the loss part of a step: from the final hidden states
of both models (student's with gradients) through the LM heads, CE + the divergence, and the
backward pass to those hidden states and the student's head. The transformer blocks cost the
same on both paths and are left out.

Memory: the growth of the resident set over the loss part (its high-water mark, reset just
before through /proc/self/clear_refs, minus the resident set then), so weights, data and the
blocks' activations are not counted. Linux only. Each path runs in its own process so that one
path's freed pages cannot hide the other's. Time: the median of `--repeats` passes after one
warm-up.
"""

import json
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from distillation.config import DistillConfig
from distillation.objectives.clm import CausalLM
from distillation.token_losses import ChunkedTokenLosses, DenseTokenLosses


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def _llama(vocab: int, hidden: int) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096)
    return LlamaForCausalLM(config)


def measure(spec: dict) -> dict:
    """One path (`spec["chunk_rows"]` 0 = dense), in this process: {"peak_mb", "seconds"}."""
    torch.manual_seed(0)
    torch.set_num_threads(spec["threads"])
    vocab, batch, seq = spec["vocab_size"], spec["batch_size"], spec["seq_len"]
    student, teacher = _llama(vocab, spec["student_hidden"]), _llama(vocab, spec["teacher_hidden"])
    cfg = DistillConfig.from_dict({"objective": "clm", "dump_path": "unused", "data_file": "unused", "student_name": "s",
                                   "teacher_name": "t", "max_seq_length": seq, "divergence": spec["divergence"],
                                   "loss_chunk_rows": spec["chunk_rows"], "alpha_ce": 1.0, "alpha_task": 1.0})
    objective = CausalLM(cfg, tokenizer=range(vocab))  # the losses read only the tokenizer's size (Objective.columns)
    source = SimpleNamespace(model=teacher, members=())  # what the chunked losses read of a teacher (teachers/)
    losses = ChunkedTokenLosses(cfg, objective, student, source) if spec["chunk_rows"] else DenseTokenLosses(cfg, objective)
    batch_data = {"labels": torch.randint(0, vocab, (batch, seq))}
    h_s = torch.randn(batch, seq, spec["student_hidden"], requires_grad=True)
    h_t = torch.randn(batch, seq, spec["teacher_hidden"])

    def one_pass():
        if spec["chunk_rows"]:
            terms = losses(["task", "ce"], h_s, h_t, batch_data)
        else:
            s_logits = student.lm_head(h_s)
            with torch.no_grad():
                t_logits = teacher.lm_head(h_t)
            terms = losses(["task", "ce"], s_logits, t_logits, batch_data)
        (terms["task"] + terms["ce"]).backward()
        h_s.grad = None
        student.zero_grad(set_to_none=True)

    one_pass()  # warm-up: allocator pools, kernels
    times = []
    for i in range(spec["repeats"]):
        if i == 0:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set
            base = _rss_mb("VmRSS")
        start = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - start)
        if i == 0:
            peak = _rss_mb("VmHWM") - base
    return {"peak_mb": peak, "seconds": statistics.median(times)}


def benchmark(args) -> list:
    """[(label, result)] for dense and each chunk size, each measured in a child process."""
    results = []
    for rows in [0] + list(args.chunk_rows):
        spec = {"vocab_size": args.vocab_size, "batch_size": args.batch_size, "seq_len": args.seq_len,
                "student_hidden": args.student_hidden, "teacher_hidden": args.teacher_hidden, "divergence": args.divergence,
                "chunk_rows": rows, "repeats": args.repeats, "threads": args.threads}
        proc = subprocess.run([sys.executable, "-m", "distillation.tools.loss_benchmark", json.dumps(spec)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"loss benchmark child (chunk_rows {rows}) failed:\n{proc.stderr[-3000:]}")
        results.append(("dense" if rows == 0 else f"chunked, {rows} rows", json.loads(proc.stdout.strip().splitlines()[-1])))
    return results


def format_results(args, results) -> str:
    dense = results[0][1]
    lines = [f"clm token losses (CE + {args.divergence}), vocabulary {args.vocab_size:,}, {args.batch_size} x {args.seq_len} "
             f"tokens, student hidden {args.student_hidden}, teacher hidden {args.teacher_hidden}, fp32, "
             f"{args.threads} thread(s); time: median of {args.repeats}", "",
             "| path | peak memory of the loss | vs dense | time (forward + backward) | vs dense |", "|---|---:|---:|---:|---:|"]
    for label, r in results:
        lines.append(f"| {label} | {r['peak_mb']:,.0f} MB | {r['peak_mb'] / dense['peak_mb']:.2f}x | {r['seconds']:.2f} s | "
                     f"{r['seconds'] / dense['seconds']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
