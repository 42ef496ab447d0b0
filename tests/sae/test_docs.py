"""docs/sae.md: its offline Python blocks run as written, in order, in one namespace (the SAELens export block
needs sae-lens, which cannot be installed here, and is the one skipped by name)."""
import os
import re
from pathlib import Path

from vit_patching.sae import spliced_saes

DOC = Path(__file__).resolve().parents[2] / "docs" / "sae.md"


def test_the_python_blocks_of_docs_sae_md_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    offline = [b for b in blocks if "sae_lens" not in b]
    assert len(blocks) == 5 and len(offline) == 4
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the example writes my_sae/
    try:
        namespace: dict = {}
        for code in offline:
            exec(compile(code, str(DOC), "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert sorted(p.name for p in (tmp_path / "my_sae").iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert sorted(p.name for p in (tmp_path / "my_run").iterdir()) == ["cfg.json", "metrics.json",
                                                                       "sae_weights.safetensors", "training.json"]
    assert namespace["patched_logits"].shape == (1, 10)
    assert not spliced_saes(namespace["model"])  # the with blocks removed their SAEs
