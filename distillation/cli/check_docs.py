"""Check the docs against the code: every `--flag` in README.md and docs/*.md is an option of
its script (`--help`), and every stated default equals distillation/config.py's.

Prints one line per problem (`file:line: message`) and exits 1 when there is any, else 0. The
checks are described in distillation/tools/check_docs.py; tests/test_docs.py runs them.
"""

import argparse

from distillation.cli import ArgumentParser, command


def _main(argv=None):
    from distillation.tools.check_docs import ROOT, check

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=ROOT, help="Folder holding README.md and docs/ (default: this checkout).")
    args = p.parse_args(argv)
    problems = check(args.root)
    for line in problems:
        print(line)
    print(f"check_docs: {len(problems)} problem(s)" if problems else "check_docs: the docs agree with the code")
    return 1 if problems else 0


main = command(_main)
