"""Attaching a readout to a HookedViT: a new model sharing the weights, whose ``hook_logits`` are the scores."""

from __future__ import annotations

import copy
from itertools import chain

from torch import nn
from transformer_lens.hook_points import HookPoint

from transformer_lens import HookedRootModule

from .components import is_hooked
from .readout import ClassifierHead, ModuleReadout, Readout


def with_readout(model: nn.Module, readout: nn.Module) -> nn.Module:
    """``model.with_readout(readout)``: see :meth:`HookedViT.with_readout`."""
    if not isinstance(model, HookedRootModule) or not hasattr(model, "feature_width"):  # hooked_vit imports this module
        raise TypeError(f"model: expected a HookedViT, got {type(model).__name__}")
    if not isinstance(readout, nn.Module):
        raise TypeError(f"readout: expected a Readout or an nn.Module from features to scores, "
                        f"got {type(readout).__name__}")
    attached = [n for n, hp in model.hook_dict.items() if is_hooked(hp)]
    if attached:
        raise ValueError(f"model: expected no hooks attached while a readout is attached (the new model has its "
                         f"own hook points), got hooks on {attached[:3]}; call model.reset_hooks() first")
    if not isinstance(readout, Readout):
        readout = ModuleReadout(readout, model.feature_width())
    readout.check_model(model)
    if readout.reads == "features" and readout.d_in is not None and readout.d_in != model.feature_width():
        raise ValueError(f"readout: expected a readout of the model's output features (width "
                         f"{model.feature_width()}), got one that reads width {readout.d_in}")
    through_head = readout.reads == "head" or (readout.reads == "features" and model.cfg.head_kind == "projection")
    inside = readout.reads == "latent"  # read inside the network: the final norm and head do not run
    if model.cfg.normalization_type in ("LNPre", "RMSPre") and hasattr(model, "head") and not through_head \
            and not inside:
        raise ValueError("readout: expected a model whose final norm was not folded into its head "
                         "(process_weights_(fold_ln=True) moved its affine there, and this readout bypasses the "
                         "head), got a processed model; attach the readout to the unprocessed model")
    if readout.reads == "tokens" and readout.d_in is None:
        raise ValueError("readout: a readout of the token stream must declare its input width d_in")
    # New modules (hook points, config, flags) around the same parameters and buffers: hooks and flags on the
    # new model never reach the original, weights are shared, nothing of the original changes.
    memo: dict = {id(t): t for t in chain(model.parameters(recurse=True), model.buffers(recurse=True))}
    old = model._modules.get("readout")
    if old is not None:
        memo[id(old)] = None  # replaced below: never copied
    new = copy.deepcopy(model, memo)
    new.readout = readout.to(device=model.device, dtype=model.dtype)  # nn.Module.__setattr__: a submodule
    if not isinstance(getattr(new, "hook_logits", None), HookPoint):
        new.hook_logits = HookPoint()  # [batch, n_classes]: a headless model gains the scores' hook point
    new.cfg.n_classes = readout.n_classes
    new.setup()
    return new


def current_readout(model: nn.Module) -> Readout | None:
    """``model.readout``: the attached readout, else :class:`ClassifierHead` for a classifier-head model, else
    ``None`` (a headless or projection-head model outputs features, not class scores)."""
    attached = model._modules.get("readout")
    if attached is not None:
        return attached
    if getattr(model, "head", None) is None or model.cfg.head_kind != "classifier":
        return None
    head = ClassifierHead()
    head.check_model(model)
    return head
