"""scripts/benchmark_cross_tokenizer.py --quick: the student alone (ce) and distilled by each
cross-tokenizer loss (uld, aligned) from a teacher with another tokenizer, all scored in bits per
byte, and a second invocation reuses results.json.

Structure and sane ranges only: the quality claim is measured on SmolLM2-135M-Instruct and the
Shakespeare lines (scripts/benchmark_cross_tokenizer.py --out runs/cross_tokenizer).
"""

import json
import math
import os
import subprocess
import sys

from conftest import ROOT, SUBPROCESS_ENV

SCRIPT = os.path.join(ROOT, "scripts", "benchmark_cross_tokenizer.py")


def test_quick_cross_tokenizer_benchmark_scores_ce_uld_and_aligned_in_bits_per_byte(tmp_path):
    cmd = [sys.executable, SCRIPT, "--quick", "--out", str(tmp_path), "--seeds", "5", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=SUBPROCESS_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    runs = results["runs"]
    assert set(runs) == {"ce-seed5", "uld-seed5", "aligned-seed5"}
    for name, run in runs.items():
        assert math.isfinite(run["bits_per_byte"]) and 0 < run["bits_per_byte"] < 20, name
        assert math.isfinite(run["perplexity"]) and run["perplexity"] > 1, name
        assert run["steps"] == 4 and run["seconds"] > run["train_s"] > 0 and run["step_s"] > 0, name
        assert not (tmp_path / name / "final").exists()  # the numbers are kept, the weights deleted
    # the teacher is scored on its own tokens in the distilled runs only (ce has none)
    assert "teacher_bits_per_byte" not in runs["ce-seed5"]
    teacher = {runs[m]["teacher_bits_per_byte"] for m in ("uld-seed5", "aligned-seed5")}
    assert len(teacher) == 1 and math.isfinite(teacher.pop())
    # the character BPE teacher ends its tokens elsewhere than the byte-level student: some pairs exact, not all
    align = results["alignment"]
    assert 0 < align["exact_share"] < 1 and align["items"] > 0 and align["per_step_s"] > 0
    assert results["student_vocab"] <= 300
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| 5 |"))
    assert f"| {runs['aligned-seed5']['bits_per_byte']:.3f} |" in row and f"| {runs['ce-seed5']['bits_per_byte']:.3f} |" in row
    # a second invocation runs nothing: every run is in results.json
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=SUBPROCESS_ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "results.json").read_text())["runs"] == runs
    assert row in again.stdout
