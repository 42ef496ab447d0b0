"""Every Python block of README.md runs as written, offline, in a fresh process.

The rule for README code blocks:

- a block fenced exactly ```` ```python ```` runs offline (``HF_HUB_OFFLINE=1``) in a fresh interpreter whose
  working folder is an empty temporary folder, and must exit with status 0;
- a block fenced ```` ```python online ```` (a recipe that downloads pretrained weights) is only parsed, and
  must say ``pretrained``;
- other fences (``bash``, ...) are not run here.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@dataclass(frozen=True)
class Block:
    heading: str  # the nearest heading above the block
    line: int  # 1-based line of the opening fence
    info: str  # the fence's info string: "python" or "python online"
    code: str


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a markdown text whose info string starts with ``python``."""
    blocks, heading, fence = [], "(top)", None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if fence is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            elif line.startswith("```"):
                fence = (i, line[3:].strip(), [])
        elif line.startswith("```"):
            start, info, body = fence
            if info.split()[:1] == ["python"]:
                blocks.append(Block(heading, start + 1, info, "\n".join(body) + "\n"))
            fence = None
        else:
            fence[2].append(line)
    assert fence is None, f"README.md: the code block opened on line {fence[0] + 1} is never closed"
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
OFFLINE = [b for b in BLOCKS if b.info == "python"]


def test_readme_has_python_blocks_and_only_known_fences():
    assert OFFLINE, "README.md has no ```python block"
    unknown = [(b.heading, b.info) for b in BLOCKS if b.info not in ("python", "python online")]
    assert not unknown, f"README.md: python fences must be ```python or ```python online, got {unknown}"


def test_block_parser_finds_headings_and_fences():
    text = "# A\n```python\nx = 1\n```\n## B\n```bash\nls\n```\n```python online\npretrained = 1\n```\n"
    assert readme_blocks(text) == [Block("A", 2, "python", "x = 1\n"), Block("B", 9, "python online", "pretrained = 1\n")]


def _id(block: Block) -> str:
    return f"line{block.line}-" + re.sub(r"\W+", "_", block.heading).strip("_")


@pytest.mark.parametrize("block", OFFLINE, ids=_id)
def test_readme_python_block_runs_offline_in_a_fresh_process(block, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    proc = subprocess.run([sys.executable, "-c", block.code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (
        f"README.md block under '{block.heading}' (line {block.line}) failed:\n{proc.stderr[-3000:]}"
    )


def test_readme_online_blocks_parse_and_load_pretrained_weights():
    for block in BLOCKS:
        if block.info != "python online":
            continue
        try:
            ast.parse(block.code)
        except SyntaxError as e:
            raise AssertionError(f"README.md block under '{block.heading}' (line {block.line}): {e}") from None
        assert "pretrained" in block.code, f"README.md online block under '{block.heading}' (line {block.line})"
