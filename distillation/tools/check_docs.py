"""What scripts/check_docs.py runs: the docs (README.md and docs/*.md) against the code.

1. Every `--flag` in a command line of one of our scripts (`python scripts/X.py ...`,
   `torchrun ... scripts/X.py ...`, `distil-X ...`), in a code block or an inline code span,
   is an option of that script's parser: the parser `--help` prints, captured in-process
   where the script's `parse_args` runs (nothing else of the script runs). Flags before the
   script (torchrun's) are not the script's; flags inside a quoted value (`--extra='--k 63'`)
   belong to another script and are checked as prose.
2. Every other `--flag` (prose, comments, quoted values) is an option of at least one of our
   scripts, or one of the few flags of other tools the docs name (EXTERNAL_FLAGS).
3. Every defaults table (a table whose header names the three objectives) states the
   defaults of `distillation/config.py`: OBJECTIVE_DEFAULTS per objective,
   DEFAULT_MAX_SEQ_LENGTH, and which objectives cache the teacher's logits; and every row of an
   "everywhere" defaults table (header `| flag | default |`) states the DistillConfig field's
   default.

Each problem is one line `file:line: message`; `check(...)` returns them (empty: the docs agree).
"""

import argparse
import dataclasses
import glob
import importlib
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout

# Flags of tools that are not ours (torchrun, pip, SLURM, tensorboard, mkdocs) that the docs may name.
EXTERNAL_FLAGS = {
    "nproc_per_node", "nproc-per-node", "nnodes", "rdzv_backend", "rdzv_endpoint", "rdzv_id", "standalone", "node_rank",
    "no-deps", "index-url", "upgrade", "quiet", "nodes", "ntasks-per-node", "gpus-per-node", "cpus-per-task", "requeue",
    "signal", "logdir", "strict", "site-dir", "config-file",
    "max-logprobs", "port", "host", "tensor-parallel-size", "max-model-len",  # vLLM's server
}

FLAG = re.compile(r"(?<![\w-])--([A-Za-z][\w-]*)")
SCRIPT = re.compile(r"(?:(?<![\w./-])|(?<=/))scripts/(\w+)\.py\b|(?<![\w/-])distil-([a-z][a-z-]*)\b")


class _Captured(Exception):
    def __init__(self, parser):
        super().__init__("parser captured")
        self.parser = parser


def _module_of(script: str, code_root: str) -> str:
    """`distillation.cli.X` that scripts/<script>.py runs (read off the wrapper's import)."""
    path = os.path.join(code_root, "scripts", script + ".py")
    if not os.path.isfile(path):
        raise KeyError(script)
    with open(path) as f:
        found = re.search(r"from\s+(distillation\.cli\.\w+)\s+import\s+main", f.read())
    if not found:
        raise KeyError(script)
    return found.group(1)


def script_options(code_root: str = ROOT) -> dict:
    """{script name (scripts/<name>.py): set of its option strings, as --help lists them}."""
    options = {}
    original = argparse.ArgumentParser.parse_known_args

    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    argparse.ArgumentParser.parse_known_args = capture
    try:
        for path in sorted(glob.glob(os.path.join(code_root, "scripts", "*.py"))):
            name = os.path.basename(path)[:-3]
            try:
                module = importlib.import_module(_module_of(name, code_root))
            except KeyError:
                continue
            run = getattr(module, "_main", None) or module.main
            try:
                run(["--help"])
            except _Captured as captured:
                options[name] = {s for s in captured.parser._option_string_actions if s.startswith("--")}
            else:
                raise RuntimeError(f"scripts/{name}.py: its parser was not reached")
    finally:
        argparse.ArgumentParser.parse_known_args = original
    return options


def doc_files(doc_root: str) -> list:
    files = [os.path.join(doc_root, "README.md")]
    files += sorted(glob.glob(os.path.join(doc_root, "docs", "**", "*.md"), recursive=True))
    return [f for f in files if os.path.isfile(f)]


def _spans(text: str):
    """(line number, text, is_code) pieces of a markdown file: fenced blocks joined across `\\`
    continuations, one piece per command line; inline code spans (which may wrap) in prose;
    the prose itself without them."""
    lines = text.split("\n")
    i = 0
    prose = []
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith("```"):
                start, joined = i, lines[i]
                while joined.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    joined = joined.rstrip()[:-1] + " " + lines[i]
                yield start + 1, joined, True
                i += 1
            i += 1
            continue
        prose.append((i + 1, lines[i]))
        i += 1
    # inline code spans may wrap over lines: scan paragraph by paragraph
    paragraph = []
    for number, line in prose + [(None, "")]:
        if line.strip() and number is not None:
            paragraph.append((number, line))
            continue
        if paragraph:
            offsets, body = [], ""
            for n, ln in paragraph:
                offsets.append((len(body), n))
                body += ln + "\n"
            line_at = lambda pos: max(n for off, n in offsets if off <= pos)  # noqa: E731
            last = 0
            for m in re.finditer(r"(`+)(.+?)\1", body, re.S):
                yield line_at(last), body[last:m.start()], False
                yield line_at(m.start()), m.group(2).replace("\n", " "), True
                last = m.end()
            yield line_at(last), body[last:], False
        paragraph = []


def _split_comment(code: str):
    """(code, comment) of a shell line: the comment starts at a `#` outside quotes after a blank."""
    quote = None
    for i, ch in enumerate(code):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or code[i - 1].isspace()):
            return code[:i], code[i:]
    return code, ""


def _commands(code: str):
    """(script or None, [flags of the script], [other flags]) for each command of a code line."""
    code, comment = _split_comment(code)
    others = FLAG.findall(comment)

    def unquote(m):  # a quoted value holds another script's flags (--extra='--temperature 1')
        others.extend(FLAG.findall(m.group(0)))
        return "''"

    code = re.sub(r"'[^']*'|\"[^\"]*\"", unquote, code)
    for segment in re.split(r"&&|\|\||;|\|", code):
        found = SCRIPT.search(segment)
        if found:
            script = found.group(1) or found.group(2).replace("-", "_")
            yield script, FLAG.findall(segment[found.end():]), []
        else:  # not one of our scripts: its flags must be some script's, or another tool's (EXTERNAL_FLAGS)
            others.extend(FLAG.findall(segment))
    yield None, [], others


def check_flags(doc_root: str, options: dict) -> list:
    problems = []
    every = set().union(*options.values())
    for path in doc_files(doc_root):
        rel = os.path.relpath(path, doc_root)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for number, piece, is_code in _spans(text):
            if not is_code:
                for flag in FLAG.findall(piece):
                    if "--" + flag not in every and flag not in EXTERNAL_FLAGS:
                        problems.append(f"{rel}:{number}: --{flag} is an option of none of scripts/*.py")
                continue
            for script, flags, others in _commands(piece):
                if script is not None and script not in options:
                    problems.append(f"{rel}:{number}: {script}: no such script in scripts/ (or distil-* command)")
                    continue
                for flag in flags:
                    if "--" + flag not in options[script]:
                        problems.append(f"{rel}:{number}: --{flag} is not an option of scripts/{script}.py (its --help)")
                for flag in others:
                    if "--" + flag not in every and flag not in EXTERNAL_FLAGS:
                        problems.append(f"{rel}:{number}: --{flag} is an option of none of scripts/*.py")
    return problems


# --- defaults tables ------------------------------------------------------------------------------

def _cells(line: str) -> list:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _tables(text: str):
    """(line number of the header, header cells, [(line number, cells)]) of each markdown table."""
    lines = text.split("\n")
    i = 0
    while i < len(lines) - 1:
        if lines[i].lstrip().startswith("|") and re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1]):
            header, rows, j = _cells(lines[i]), [], i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                rows.append((j + 1, _cells(lines[j])))
                j += 1
            yield i + 1, header, rows
            i = j
        else:
            i += 1


def _number(text: str):
    found = re.search(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", text.replace(",", ""))
    return float(found.group(0)) if found else None


def _same(stated, actual) -> bool:
    if isinstance(actual, bool) or actual is None or isinstance(actual, str):
        return stated == actual
    return stated is not None and abs(stated - float(actual)) <= 1e-12 * max(1.0, abs(float(actual)))


def _stated(cell: str, actual):
    """The value a cell states, in the type of `actual` (on/off for booleans)."""
    cell = cell.strip().strip("`").strip("*")
    if isinstance(actual, bool):
        word = cell.split()[0].lower() if cell else ""
        return {"on": True, "off": False, "true": True, "false": False}.get(word, word)
    if isinstance(actual, str):
        return cell.split()[0] if cell else ""
    return _number(cell)


def code_defaults():
    """(per-objective defaults {flag: {objective: value}}, objective names, field defaults {flag: value})."""
    from distillation import config

    names = list(config.OBJECTIVE_NAMES)
    per_objective = {name: dict(zip(names, values)) for name, values in config.OBJECTIVE_DEFAULTS.items()}
    per_objective["max_seq_length"] = dict(config.DEFAULT_MAX_SEQ_LENGTH)
    cache = {}
    for objective in names:  # which objectives cache the teacher's logits when not told: resolve() decides
        cfg = config.DistillConfig(objective=objective, teacher_name="teacher", student_name="student", data_file="x",
                                   dump_path="y")
        try:
            cfg.resolve()
        except Exception:  # noqa: BLE001 - a resolve that needs more than this is not a default's business
            pass
        cache[objective] = bool(cfg.cache_teacher_logits)
    per_objective["cache_teacher_logits"] = cache
    fields = {f.name: f.default for f in dataclasses.fields(config.DistillConfig)
              if f.default is not dataclasses.MISSING}
    return per_objective, names, fields


def check_defaults(doc_root: str) -> list:
    per_objective, names, fields = code_defaults()
    problems, tables = [], 0
    for path in doc_files(doc_root):
        rel = os.path.relpath(path, doc_root)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for header_line, header, rows in _tables(text):
            columns = [next((names.index(n) for n in names if re.search(rf"\b{n}\b", h)), None) for h in header]
            if sorted(c for c in columns if c is not None) == list(range(len(names))):
                tables += 1
                for number, cells in rows:
                    flags = re.findall(r"`--(\w+)`", cells[0])
                    for col, cell in zip(columns, cells):
                        if col is None:
                            continue
                        parts = re.split(r"\s*(?:×|,(?=\s)|\bx\b)\s*", cell) if len(flags) > 1 else [cell]
                        if len(parts) != len(flags):
                            problems.append(f"{rel}:{number}: {len(flags)} flags but {len(parts)} values under {names[col]}")
                            continue
                        for flag, part in zip(flags, parts):
                            if flag not in per_objective:
                                problems.append(f"{rel}:{number}: --{flag} has no per-objective default in distillation/config.py")
                                continue
                            actual = per_objective[flag][names[col]]
                            if not _same(_stated(part, actual), actual):
                                problems.append(f"{rel}:{number}: --{flag} under {names[col]}: the docs say {part!r}, "
                                                f"the code's default is {actual!r}")
            elif [h.lower() for h in header[:2]] == ["flag", "default"]:
                tables += 1
                for number, cells in rows:
                    flag = re.search(r"`--(\w+)`", cells[0])
                    if not flag or flag.group(1) not in fields:
                        problems.append(f"{rel}:{number}: {cells[0]} is not an option with a fixed default in DistillConfig")
                        continue
                    actual = fields[flag.group(1)]
                    if not _same(_stated(cells[1], actual), actual):
                        problems.append(f"{rel}:{number}: --{flag.group(1)}: the docs say {cells[1]!r}, the code's default is {actual!r}")
    if not tables:
        problems.append("no defaults table found in README.md or docs/")
    return problems


def check(doc_root: str = ROOT, options=None) -> list:
    options = options if options is not None else script_options()
    return check_flags(doc_root, options) + check_defaults(doc_root)
