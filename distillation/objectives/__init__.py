"""Objective registry: adding an objective is one file here and one line below."""

from distillation.errors import InputError
from distillation.objectives.base import Objective
from distillation.objectives.classification import SequenceClassification
from distillation.objectives.clm import CausalLM
from distillation.objectives.clm_cross import CrossTokenizerCLM
from distillation.objectives.mlm import MaskedLM

OBJECTIVES = {
    SequenceClassification.name: SequenceClassification,
    MaskedLM.name: MaskedLM,
    CausalLM.name: CausalLM,
}


def build_objective(cfg, tokenizer, teacher_config=None, teacher_tokenizer=None) -> Objective:
    """`teacher_tokenizer`: the teacher's, where it is not `tokenizer` (clm only: CrossTokenizerCLM)."""
    if cfg.objective not in OBJECTIVES:
        raise InputError(f"--objective: '{cfg.objective}' is not available (have: {', '.join(sorted(OBJECTIVES))})")
    if teacher_tokenizer is not None:
        return CrossTokenizerCLM(cfg, tokenizer, teacher_config, teacher_tokenizer)
    return OBJECTIVES[cfg.objective](cfg, tokenizer, teacher_config)
