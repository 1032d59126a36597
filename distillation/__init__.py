"""distillation: distil a Hugging Face Transformer teacher into a smaller student."""

from distillation.errors import InputError

__all__ = ["InputError"]
