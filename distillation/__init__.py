"""distillation: distil a Hugging Face Transformer teacher into a smaller student.

From Python: `distil(teacher=..., student=..., train_data=..., **options)` (distillation/api.py);
from the shell: scripts/train.py with the same options as flags.
"""

from distillation.api import DistilResult, distil
from distillation.config import DistillConfig
from distillation.errors import InputError

__all__ = ["DistilResult", "DistillConfig", "InputError", "distil"]
