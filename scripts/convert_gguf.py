"""Convert a GGUF causal LM into a plain from_pretrained folder: `--help` lists the options; the code is distillation/cli/convert_gguf.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distillation.cli.convert_gguf import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
