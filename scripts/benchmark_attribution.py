#!/usr/bin/env python
"""Attribution benchmark: every method x every metric, with 95 % CIs and time per image.

A thin entry point: the application lives in :mod:`vit_patching.benchmark.command` (``--help`` lists the
options; the usage examples are in ``docs/benchmark.md``).
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: it reads the variable once

from vit_patching.benchmark.command import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
