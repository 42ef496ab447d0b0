"""Deprecated: the attribution benchmark moved to :mod:`vit_patching.benchmark` (an application above the methods
and the metrics). This module re-exports its public names and warns on import.
"""
import warnings

from vit_patching.benchmark import *  # noqa: F401,F403
from vit_patching.benchmark import __all__  # noqa: F401

warnings.warn(
    "vit_patching.attribution.benchmark is deprecated; import from vit_patching.benchmark",
    DeprecationWarning,
    stacklevel=2,
)
