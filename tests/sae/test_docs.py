"""docs/sae.md: its offline Python blocks run as written, in order, in one namespace (the SAELens export block
needs sae-lens, which cannot be installed here, and is the one skipped by name)."""
import os
import re
from pathlib import Path

import torch

from vit_patching.sae import spliced_saes

DOC = Path(__file__).resolve().parents[2] / "docs" / "sae.md"


def test_the_python_blocks_of_docs_sae_md_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    offline = [b for b in blocks if "sae_lens" not in b]
    assert len(blocks) == 7 and len(offline) == 6
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
    assert (tmp_path / "features.html").read_text(encoding="utf-8").count("<section") == 3
    assert not spliced_saes(namespace["model"])  # the with blocks removed their SAEs
    # "Latents as sites": the latent sweep, its AtP estimate (verified exactly), a kept-feature evaluation and CAAP
    # on a latent readout ran; the verification's exact values are the sweep's cells.
    sweep, est = namespace["sweep"], namespace["estimate"]
    v = est.options["verification"]
    for i, cell in enumerate(v.cells):
        assert torch.allclose(v.exact[i], sweep.values[cell], atol=5e-7, rtol=0)
    assert 0 <= len(namespace["kept"].kept) == 4 and torch.isfinite(namespace["feature_map"].map).all()
