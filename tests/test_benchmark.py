"""scripts/benchmark.py --quick: both runs, their ratio and both accuracies are reported.

Speed is the benchmark's business, not the tests': this checks the output's structure only.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from distillation.distributed import fast_bf16


def test_quick_benchmark_reports_both_runs(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "--quick", "--work_dir", str(tmp_path), "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert set(res["runs"]) == {"recipe", "ours"}
    for run in res["runs"].values():
        assert run["examples_per_s"] > 0 and run["peak_rss_mb"] > 0 and run["train_s"] > 0
        assert 0.0 <= run["accuracy"] <= 1.0
        assert run["tflop_per_s"] > 0 and 0 < run["mfu"] and run["padding_overhead"] >= 1.0
    # ours runs bf16 where the CPU has it natively (emulated bf16 is ~100x slower than fp32)
    native = "bf16" if fast_bf16(torch.device("cpu")) else "fp32"
    assert res["runs"]["recipe"]["precision"] == "fp32" and res["runs"]["ours"]["precision"] == native
    assert res["speedup"] == pytest.approx(res["runs"]["ours"]["examples_per_s"] / res["runs"]["recipe"]["examples_per_s"])
    assert res["accuracy_gap_points"] == pytest.approx(100 * (res["runs"]["ours"]["accuracy"] - res["runs"]["recipe"]["accuracy"]))
    assert res["matmul_peak_tflop_per_s"]["bf16"] > 0 and res["matmul_peak_tflop_per_s"]["fp32"] > 0
    assert "speed-up ours/recipe" in proc.stdout and "| recipe | fp32 |" in proc.stdout


def test_loss_benchmark_reports_dense_and_chunked(tmp_path):
    """Structure only; the memory claim is measured with the real sizes (README, Losses)."""
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "benchmark_losses.py"), "--vocab_size", "2000", "--batch_size", "1",
         "--seq_len", "64", "--chunk_rows", "16", "--repeats", "1", "--threads", "1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| dense") or line.startswith("| chunked")]
    assert [r.split("|")[1].strip() for r in rows] == ["dense", "chunked, 16 rows"]
    assert rows[0].split("|")[3].strip() == "1.00x"
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark_losses.py"), "--chunk_rows", "0"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --chunk_rows must be >= 1 (got 0)"


def test_offline_benchmark_reports_online_and_cached_runs_and_keeps_them(tmp_path):
    """Structure only (the quality claim is measured on SmolLM2: README, "The teacher's logits,
    offline"): one seed of KD alone, both runs, and a second invocation reuses results.json."""
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "benchmark_offline.py"), "--quick", "--out", str(tmp_path), "--seeds", "3",
           "--alpha_task", "0", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    seconds, steps = results.pop("seconds"), results.pop("steps")
    assert set(results) == {"online-task0-seed3", "cache-task0-seed3"} and all(v > 1 for v in results.values())
    assert set(seconds) == {"online-task0-seed3", "cache-pass-seed3", "cache-task0-seed3"} and all(v > 0 for v in seconds.values())
    assert set(steps) == {"online-task0-seed3", "cache-task0-seed3"} and all(s["teacher_wait_s"] is None for s in steps.values())
    assert f"cache pass seed 3 {seconds['cache-pass-seed3']:.0f} s" in proc.stdout
    assert f"online: {steps['online-task0-seed3']['step_s']:.2f} s a step (mean of 1 runs)" in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| KD only"))
    assert f"{results['online-task0-seed3']:.1f}" in row and f"{results['cache-task0-seed3']:.1f}" in row
    assert json.loads((tmp_path / "teacher-cache-seed3" / "manifest.json").read_text())["seed"] == 3
    os.remove(tmp_path / "online-task0-seed3" / "summary.json")  # finished runs are not run again
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 0 and row in again.stdout
    for kinds, message in ((["served20"], "--kinds served20: give the teacher's server with --teacher_url"),
                           (["online", "served"], "--kinds: 'served' is none of online, cache, served<K>")):
        bad = subprocess.run([*cmd, "--kinds", *kinds], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
