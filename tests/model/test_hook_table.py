"""docs/hook_points.md is generated from real models and must match the code (regenerated here)."""
import re
from pathlib import Path

import pytest
import torch

from model_helpers import all_gates_on, images, make_pair
from vit_patching.hook_names import get_act_name
from vit_patching.model.hook_table import hook_rows, main, render_hook_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "hook_points.md"


@pytest.fixture(scope="module")
def table():
    return render_hook_table()


def test_hook_points_doc_is_up_to_date(table):
    assert DOC.read_text(encoding="utf-8") == table, (
        "docs/hook_points.md is stale: run `python -m vit_patching.model.hook_table docs/hook_points.md`"
    )


def test_every_hook_of_a_model_has_a_row_with_its_shape(table):
    """Independent of the generator's reference models: a 2-layer model with other sizes, every gate on."""
    rows = {r.pattern: r for r in hook_rows()}
    _, model = make_pair(depth=2, pre_norm=True, qk_norm=True, reg_tokens=2)
    all_gates_on(model)
    with torch.no_grad():
        _, cache = model.run_with_cache(images(2))
    cfg = model.cfg
    words = {"batch": 2, "pos": cfg.n_pos, "query_pos": cfg.n_pos, "key_pos": cfg.n_pos, "d_model": cfg.d_model,
             "head_index": cfg.n_heads, "d_head": cfg.d_head, "d_mlp": cfg.d_mlp, "n_classes": cfg.n_classes,
             "1": 1, "qkv": 3}  # fmt: skip
    for name, act in cache.items():
        row = rows[re.sub(r"^blocks\.\d+\.", "blocks.{layer}.", name)]
        spans = re.findall(r"`([a-z_0-9 ]+)`", row.shape)  # shapes, and the gate flags that label some
        shapes = [tuple(words[w] for w in s.split()) for s in spans if all(w in words for w in s.split())]
        assert tuple(act.shape) in shapes, (name, row.shape)
        if row.act_name.startswith("get_act_name"):  # the spelled call builds this very name
            layer = int(name.split(".")[1]) if name.startswith("blocks.") else None
            assert eval(row.act_name, {"get_act_name": get_act_name, "layer": layer}) == name
    assert "`use_split_qkv_input` on" in rows["blocks.{layer}.hook_q_input"].exists
    assert rows["hook_pooled_dist"].exists.startswith("`cfg.has_dist`")
    assert rows["blocks.{layer}.hook_resid_pre"].exists == "always"


def test_main_writes_and_checks(tmp_path, table):
    out = tmp_path / "hook_points.md"
    assert main([str(out), "--check"]) == 1  # missing file
    assert main([str(out)]) == 0
    assert out.read_text(encoding="utf-8") == table
    assert main([str(out), "--check"]) == 0
