"""Plain PyTorch hooks (``register_forward_hook`` & co.) found on modules, and torch's global module hooks.

:meth:`HookedViT.readout_only_blockers <vit_patching.model.hooked_vit.HookedViT.readout_only_blockers>` uses
them: such a hook on a module of the pruned last block would see only the head's tokens.
"""

from __future__ import annotations

import torch.nn.modules.module as torch_module
from torch import nn

# (kind, attribute) of each hook table on a module; the ``*_with_kwargs`` / ``*_always_called`` tables only flag
# hooks that are also in these.
MODULE_HOOKS = (("forward", "_forward_hooks"), ("forward-pre", "_forward_pre_hooks"),
                ("backward", "_backward_hooks"), ("backward-pre", "_backward_pre_hooks"))
# (kind, attribute of torch.nn.modules.module, the function that registers such a hook)
GLOBAL_HOOKS = (("forward", "_global_forward_hooks", "register_module_forward_hook"),
                ("forward-pre", "_global_forward_pre_hooks", "register_module_forward_pre_hook"),
                ("backward", "_global_backward_hooks", "register_module_(full_)backward_hook"),
                ("backward-pre", "_global_backward_pre_hooks", "register_module_full_backward_pre_hook"))


def module_hook_kinds(module: nn.Module) -> list[str]:
    """The kinds of plain hooks attached to ``module`` itself (``"forward"``, ``"forward-pre"``, ...).

    Example:
        >>> m = nn.Linear(2, 2); _ = m.register_forward_pre_hook(lambda mod, args: None)
        >>> module_hook_kinds(m)
        ['forward-pre']
    """
    return [kind for kind, table in MODULE_HOOKS if getattr(module, table, None)]


def global_hooks() -> list[str]:
    """One line per kind of global module hook registered now (they run on every module).

    Example:
        >>> global_hooks()
        []
    """
    return [f"a global {kind} hook (torch.nn.modules.module.{register})" for kind, table, register in GLOBAL_HOOKS
            if getattr(torch_module, table, None)]
