"""Patching experiments on HookedViT, all run by one batched engine."""

from .engine import Intervention, PatchRun, PatchSpec, Site, run_interventions, run_patch_spec
from .metrics import logit_diff, recovery, target_logit, target_prob
from .results import PatchingResult
from .heads import HEAD_SITES, patch_heads
from .paths import Node, all_heads, all_senders, direct_path_patch, path_patch
from .sweeps import BLOCK_EVERY_SITES, SWEEP_SITES, block_every, layer_sweep

__all__ = [
    "Intervention", "PatchRun", "PatchSpec", "Site", "run_interventions", "run_patch_spec",
    "logit_diff", "recovery", "target_logit", "target_prob", "PatchingResult",
    "HEAD_SITES", "patch_heads", "Node", "all_heads", "all_senders", "direct_path_patch", "path_patch",
    "BLOCK_EVERY_SITES", "SWEEP_SITES", "block_every", "layer_sweep",
]
