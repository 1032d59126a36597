"""The documentation: README.md (the front page) and docs/ (the guides, built with mkdocs).

- `mkdocs build --strict` passes (no broken link or anchor, no page missing from the nav), and
  fails on a copy with a broken link or a page left out of the nav.
- scripts/check_docs.py agrees: every `--flag` the docs give a script is in its `--help`, every
  other `--flag` is some script's, every stated default is the code's; on a copy with a made-up
  flag and wrong defaults it names each of them.
- No word of the project's development history; the README stays a front page with the two
  set-up commands; the example notebook is saved with clean outputs.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, SUBPROCESS_ENV

from distillation.tools.check_docs import check, script_options

PAGES = ("index", "classification", "python", "mlm", "clm", "scale", "offline-logits", "served", "several-teachers", "cross-tokenizer",
         "on-policy", "losses", "reference-flags", "checkpoints", "bad-input", "benchmarks")


def _mkdocs(root, site):
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", os.path.join(root, "mkdocs.yml"),
                           "--site-dir", str(site)], capture_output=True, text=True, cwd=root, env=SUBPROCESS_ENV)


def _copy_docs(tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(os.path.join(ROOT, "docs"), root / "docs")
    for name in ("mkdocs.yml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), root / name)
    return root


def _edit(path, old, new):
    text = path.read_text(encoding="utf-8")
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_mkdocs_strict_build_passes(tmp_path):
    proc = _mkdocs(ROOT, tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for page in PAGES:
        assert (tmp_path / "site" / ("index.html" if page == "index" else f"{page}/index.html")).is_file(), page


def test_mkdocs_strict_build_fails_on_a_broken_link(tmp_path):
    root = _copy_docs(tmp_path)
    _edit(root / "docs" / "clm.md", "[On-policy and\nsequence-level KD](on-policy.md)", "[On-policy and\nsequence-level KD](on-polcy.md)")
    proc = _mkdocs(str(root), tmp_path / "site")
    assert proc.returncode != 0 and "on-polcy.md" in proc.stderr, proc.stderr[-3000:]


def test_mkdocs_strict_build_fails_on_a_page_left_out_of_the_nav(tmp_path):
    root = _copy_docs(tmp_path)
    _edit(root / "mkdocs.yml", "  - Bad input: bad-input.md\n", "")
    proc = _mkdocs(str(root), tmp_path / "site")
    assert proc.returncode != 0 and "bad-input.md" in proc.stderr, proc.stderr[-3000:]


def test_every_page_is_in_the_nav():
    nav = open(os.path.join(ROOT, "mkdocs.yml")).read()
    pages = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))
    assert pages == sorted(PAGES)
    for page in pages:
        assert f": {page}.md\n" in nav, page


@pytest.fixture(scope="module")
def options():
    return script_options()


def test_the_checker_reads_every_scripts_parser(options):
    scripts = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "scripts")) if f.endswith(".py"))
    assert sorted(options) == scripts
    assert {"--learning_rate", "--teacher_logits", "--on_policy_fraction", "--no-sharded_loading"} <= options["train"]
    assert {"--plan_only", "--columns"} <= options["benchmark_scale"]


def test_the_docs_agree_with_the_code(options):
    assert check(ROOT, options) == []


def test_the_checker_fails_on_a_made_up_flag_and_wrong_defaults(tmp_path, options):
    root = _copy_docs(tmp_path)
    docs = root / "docs"
    # a flag train.py does not have, in a command line (a code block) and in prose
    _edit(docs / "clm.md", "--teacher_name runs/shakespeare/smollm2-135m-instruct", "--teacher_name runs/shakespeare/smollm2-135m-instruct --teacher_temp 3")
    _edit(docs / "losses.md", "Batches are length-grouped (`--no-group_by_size`", "Batches are length-grouped (`--no-group_by_sizes`")
    # a flag of another script given to benchmark_scale.py, in an inline command
    _edit(docs / "benchmarks.md", "--steps 2 --strategies ddp --processes 1", "--steps 2 --strategies ddp --processes 1 --lines 10")
    # wrong defaults: clm's learning rate, mlm's weight decay, the cache's default, the temperature
    _edit(docs / "losses.md", "| `--learning_rate` | 2e-4 | 5e-4 | 3e-4 |", "| `--learning_rate` | 2e-4 | 5e-4 | 2e-4 |")
    _edit(docs / "losses.md", "| 0.05, 0, 5.0 |", "| 0.05, 0.01, 5.0 |")
    _edit(docs / "losses.md", "| on (off with hidden losses) |", "| off |")
    _edit(docs / "losses.md", "| `--temperature` | 2.0 |", "| `--temperature` | 1.0 |")
    problems = "\n".join(check(str(root), options))
    assert re.search(r"docs/clm\.md:\d+: --teacher_temp is not an option of scripts/train\.py", problems), problems
    assert re.search(r"docs/losses\.md:\d+: --no-group_by_sizes is an option of none of scripts", problems), problems
    assert re.search(r"docs/benchmarks\.md:\d+: --lines is not an option of scripts/benchmark_scale\.py", problems), problems
    assert re.search(r"--learning_rate under clm: the docs say '2e-4', the code's default is 0\.0003", problems), problems
    assert re.search(r"--weight_decay under mlm: the docs say '0\.01', the code's default is 0\.0", problems), problems
    assert re.search(r"--cache_teacher_logits under sequence_classification: the docs say 'off', the code's default is True", problems)
    assert re.search(r"--temperature: the docs say '1\.0', the code's default is 2\.0", problems), problems
    assert len(problems.splitlines()) == 7, problems


def test_the_checker_script_exits_1_on_a_problem(tmp_path):
    root = _copy_docs(tmp_path)
    _edit(root / "README.md", "python scripts/evaluate.py --model runs/demo/distil/final", "python scripts/evaluate.py --modle runs/demo/distil/final")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "check_docs.py"), "--root", str(root)],
                          capture_output=True, text=True, env=SUBPROCESS_ENV)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "README.md:" in proc.stdout and "--modle is not an option of scripts/evaluate.py" in proc.stdout


def _user_docs():
    files = [os.path.join(ROOT, "README.md")]
    for folder in ("docs", "examples"):
        for base, _, names in os.walk(os.path.join(ROOT, folder)):
            files += [os.path.join(base, n) for n in names if n.endswith((".md", ".ipynb"))]
    return files


def test_no_development_history_in_user_docs():
    # what the team greps for (git grep -nIiE ... -- README.md docs examples), untracked files included
    pattern = re.compile(r"sessions?\b|no GPU (was )?lent|\bissue [0-9]+|\bseed 00[0-3]\b|before this change", re.I)
    hits = [f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}" for path in _user_docs()
            for n, line in enumerate(open(path, encoding="utf-8"), 1) if pattern.search(line)]
    assert hits == []


def test_the_readme_is_a_front_page():
    lines = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().splitlines()
    assert len(lines) <= 200
    top = "\n".join(lines[:15])
    assert 'pip install torch==2.13.0 && pip install -e ".[dev]" && python scripts/demo.py' in top
    assert "python -m pytest -q tests" in top
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "\npython -m pytest -q tests\n" in ci  # CI runs exactly the README's test command


def test_the_notebook_is_saved_with_clean_outputs():
    with open(os.path.join(ROOT, "examples", "distil_classifier.ipynb")) as f:
        nb = json.load(f)
    cells = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
    # every cell after the imports shows what it printed or returned
    assert len(cells) > 1 and all(cell["outputs"] for cell in cells[1:]), [cell["source"][:1] for cell in cells if not cell["outputs"]]
    text = json.dumps([cell["outputs"] for cell in cells])
    assert not re.search(r"/tmp/|/work/|/home/|/Users/|site-packages", text)
    assert all(out.get("name") != "stderr" for cell in cells for out in cell["outputs"])  # no progress bars
    assert "student layers [0, 3]: accuracy" in text
