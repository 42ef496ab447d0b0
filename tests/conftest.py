"""Test configuration: runtime-check every jaxtyping annotation in vit_patching with beartype."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_FUSED_ATTN", "1")

from jaxtyping import install_import_hook

# Installed for the whole session (not as a context manager), so lazily imported submodules are checked too.
_HOOK = install_import_hook("vit_patching", "beartype.beartype")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny test models run fastest single-threaded; pytest -n 2 already uses both cores.
torch.set_num_threads(1)


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the CLI builds a model: these errors must come before any compute."""
    import vit_patching.cli as cli

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the argument error")

    monkeypatch.setattr(cli, "_load_model", refuse)
