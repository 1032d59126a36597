"""scripts/benchmark_teachers.py --quick: every teacher, the ensemble and every run (each teacher
alone and the mix) are scored, and a second invocation reuses results.json.

Structure and sane ranges only: the quality claim is measured on the demo's MiniLM and tweets
(scripts/benchmark_teachers.py --out runs/teachers_ensemble).
"""

import json
import os
import shutil
import subprocess
import sys

from conftest import ROOT, SUBPROCESS_ENV

SCRIPT = os.path.join(ROOT, "scripts", "benchmark_teachers.py")


def test_quick_teachers_benchmark_scores_each_teacher_alone_and_the_mix(tmp_path):
    cmd = [sys.executable, SCRIPT, "--quick", "--out", str(tmp_path), "--seeds", "5", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=SUBPROCESS_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["teachers"]) == {"teacher-seed1", "teacher-seed2", "teacher-seed3"}
    for teacher in [*results["teachers"].values(), results["ensemble"]]:
        assert 0 <= teacher["accuracy"] <= 1 and 0 <= teacher["macro_f1"] <= 1
    assert all(t["seconds"] > 0 for t in results["teachers"].values())
    runs = results["runs"]
    assert set(runs) == {"teacher-seed1-seed5", "teacher-seed2-seed5", "teacher-seed3-seed5", "mix-seed5"}
    for run in runs.values():
        assert 0 <= run["accuracy"] <= 1 and 0 <= run["macro_f1"] <= 1 and 0 <= run["agreement"] <= 1
        assert len(run["agreement_teachers"]) == 3 and all(0 <= a <= 1 for a in run["agreement_teachers"])
        assert run["seconds"] > run["train_s"] > 0 and run["steps"] > 0
    # a mixed teacher teaches every training example (48, one epoch); a single teacher has no such list
    assert runs["mix-seed5"]["taught"] == [48, 48, 48] and "taught" not in runs["teacher-seed1-seed5"]
    assert json.loads((tmp_path / "teachers-mix.json").read_text()) == [
        {"teacher": str(tmp_path / f"teacher-seed{s}" / "final")} for s in (1, 2, 3)]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| the mix of all"))
    assert f"{100 * runs['mix-seed5']['accuracy']:.1f}" in row and f"{100 * runs['mix-seed5']['agreement']:.1f}" in row
    assert f"| ensemble (mean of probabilities) | {100 * results['ensemble']['accuracy']:.1f} |" in proc.stdout

    shutil.rmtree(tmp_path / "mix-seed5")  # finished runs are not run again
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=SUBPROCESS_ENV)
    assert again.returncode == 0 and row in again.stdout, again.stderr[-3000:]
    assert not (tmp_path / "mix-seed5").exists()

    bad = subprocess.run([*cmd, "--teacher_seeds", "1", "1"], capture_output=True, text=True, timeout=60, cwd=ROOT, env=SUBPROCESS_ENV)
    assert bad.returncode == 2 and "--teacher_seeds: give at least two different seeds" in bad.stderr, bad.stderr


def test_quick_routing_benchmark_scores_every_run_per_domain(tmp_path):
    """--mode routing: two domain teachers, a student routed by domain, from each alone and from
    the mix; a perplexity per domain for each (structure and sane values only)."""
    cmd = [sys.executable, SCRIPT, "--mode", "routing", "--quick", "--out", str(tmp_path), "--seeds", "5", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=SUBPROCESS_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["teachers"]) == {"base", "teacher-shakespeare", "teacher-python"}
    runs = results["runs"]
    assert set(runs) == {"routed-seed5", "teacher-shakespeare-seed5", "teacher-python-seed5", "mix-seed5"}
    for entry in [*results["teachers"].values(), *runs.values()]:
        assert set(entry["perplexity"]) == {"shakespeare", "python"} and all(1 < p < 1e4 for p in entry["perplexity"].values())
    # routed: each teacher taught its domain's 48 records; mixed: both taught all 96
    assert runs["routed-seed5"]["taught"] == {"shakespeare": 48, "python": 48}
    assert sorted(runs["mix-seed5"]["taught"].values()) == [96, 96]
    records = [json.loads(line) for line in (tmp_path / "data" / "mixed-train.jsonl").read_text().splitlines()]
    assert len(records) == 96 and {r["domain"] for r in records} == {"shakespeare", "python"}
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| routed by domain"))
    assert f"{runs['routed-seed5']['perplexity']['python']:.2f}" in row
    # every run starts from the healed student (--heal_epochs): the raw init fine-tuned on both domains, once
    healed, students = tmp_path / "student-healed" / "final", results["students"]
    assert students["student-healed"]["seconds"] > 0 and (healed / "config.json").is_file()
    assert all(students["student-healed"]["perplexity"][d] < students["student"]["perplexity"][d] for d in ("shakespeare", "python"))
    for name, run in runs.items():
        assert json.loads((tmp_path / name / "parameters.json").read_text())["student_name"] == str(healed) == run["student"]
    assert f"| student-healed | {students['student-healed']['perplexity']['shakespeare']:.2f} |" in proc.stdout
