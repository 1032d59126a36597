"""Objective registry: adding an objective is one file here and one line below."""

from distillation.errors import InputError
from distillation.objectives.base import Objective
from distillation.objectives.classification import SequenceClassification
from distillation.objectives.clm import CausalLM
from distillation.objectives.mlm import MaskedLM

OBJECTIVES = {
    SequenceClassification.name: SequenceClassification,
    MaskedLM.name: MaskedLM,
    CausalLM.name: CausalLM,
}


def build_objective(cfg, tokenizer, teacher_config=None) -> Objective:
    if cfg.objective not in OBJECTIVES:
        raise InputError(f"--objective: '{cfg.objective}' is not available (have: {', '.join(sorted(OBJECTIVES))})")
    return OBJECTIVES[cfg.objective](cfg, tokenizer, teacher_config)
