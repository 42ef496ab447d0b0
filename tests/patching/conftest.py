"""Fixtures for the patching tests."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _single_thread():
    """Tiny models on a shared 2-core machine: intra-op threads only add contention."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
