"""A DistilBERT initialised from a BERT, as DistilBERT itself was: `--help` lists the options; the code is distillation/cli/extract_distilbert.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillation.cli.extract_distilbert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
