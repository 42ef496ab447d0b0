"""Patching experiments on HookedViT, all run by one batched engine."""

from .engine import Intervention, PatchRun, PatchSpec, Site, run_interventions, run_patch_spec
from .metrics import logit_diff, recovery, target_logit, target_prob
from .results import PatchingResult
from .heads import HEAD_SITES, patch_heads
from .paths import Node, all_heads, all_senders, direct_path_patch, path_patch
from .sweeps import BLOCK_EVERY_SITES, SWEEP_SITES, block_every, layer_sweep
from .latents import latent_sweep
# The function lives at vit_patching.patching.caap.caap; it is not re-exported here, because that would shadow
# the submodule ``vit_patching.patching.caap`` (``from vit_patching.patching import caap`` must give the module).
from .caap import Attribution, compare_attributions
from .windows import WindowSelection, select_window
# As for caap: caap_shapley / caap_interactions stay the submodules' names (the functions live inside them).
from .caap_shapley import ShapleyAttribution
from .caap_interactions import Interactions
from .window_protocol import WindowDecision, confirm_window, decide_window

__all__ = [
    "Intervention", "PatchRun", "PatchSpec", "Site", "run_interventions", "run_patch_spec",
    "logit_diff", "recovery", "target_logit", "target_prob", "PatchingResult",
    "HEAD_SITES", "patch_heads", "Node", "all_heads", "all_senders", "direct_path_patch", "path_patch",
    "BLOCK_EVERY_SITES", "SWEEP_SITES", "block_every", "layer_sweep", "latent_sweep",
    "Attribution", "compare_attributions", "WindowSelection", "select_window",
    "ShapleyAttribution", "Interactions", "WindowDecision", "confirm_window", "decide_window",
]
