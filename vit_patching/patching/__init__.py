"""Patching experiments on HookedViT, all run by one batched engine."""

from .engine import Intervention, PatchRun, PatchSpec, Site, run_interventions, run_patch_spec
from .metrics import logit_diff, recovery, target_logit, target_prob
from .results import PatchingResult

__all__ = [
    "Intervention", "PatchRun", "PatchSpec", "Site", "run_interventions", "run_patch_spec",
    "logit_diff", "recovery", "target_logit", "target_prob", "PatchingResult",
]
