"""The shipped SAEs: each loads offline, reads its model's middle residual stream, and its card's and metrics.json's
numbers equal a recomputation on the card's evaluation images."""
import json
import re
from pathlib import Path

import pytest

import vit_patching as vp
from vit_patching.hook_names import get_act_name
from vit_patching.sae import TopKSAE, evaluate_sae
from vit_patching.zoo import available_saes, load_sae, sae_card
from vit_patching.zoo.saes import SAE_DATASETS, SAE_EVAL_N, SAE_EVAL_SEED, SAES_DIR

RETRAINED = ("toy-conjunction", "toy-relation")  # 256 latents, resampling every 20 steps
CARD_ROWS = {  # card table row -> metrics key (printed with 4 decimals, KL with 6)
    "explained variance": "explained_variance", "L0 (mean non-zero latents per token)": "l0",
    "dead latents (fire on no token)": "dead_fraction", "accuracy, SAE spliced": "accuracy_spliced",
    "accuracy change": "accuracy_change", "prediction agreement, spliced vs clean": "agreement",
}


def test_every_zoo_model_has_a_shipped_sae():
    assert available_saes() == sorted(["toy-shapes", "toy-conjunction", "toy-relation", "toy-clip"])
    with pytest.raises(ValueError, match="name: expected one of the zoo models with a shipped SAE"):
        load_sae("toy-nothing")


@pytest.mark.parametrize("name", sorted(SAE_DATASETS))
def test_a_shipped_sae_matches_its_card_and_a_recomputation(name):
    model, sae, card = vp.load_model(name), load_sae(name), sae_card(name)
    hook = get_act_name("resid_pre", model.cfg.n_layers // 2)
    assert isinstance(sae, TopKSAE) and sae.cfg.hook_name == hook and sae.d_in == model.cfg.d_model
    assert f"`{hook}`" in card and f"d_in = {sae.d_in}, d_sae = {sae.d_sae}" in card and f"k = {sae.cfg.k}" in card
    training = json.loads((SAES_DIR / name / "training.json").read_text())
    stored = json.loads((SAES_DIR / name / "metrics.json").read_text())
    got = evaluate_sae(model, sae, SAE_DATASETS[name], n_images=SAE_EVAL_N, data_seed=SAE_EVAL_SEED,
                       batch_size=training["settings"]["forward_batch"], progress=False)
    assert f'load_dataset("{SAE_DATASETS[name]}", {SAE_EVAL_N}, seed={SAE_EVAL_SEED})' in card
    for key, value in got.items():  # same images, same batches, same code: equal to float rounding
        assert value == (pytest.approx(stored[key], abs=1e-9) if isinstance(value, float) else stored[key]), key
    for row, key in {**CARD_ROWS, "KL(clean readout, spliced readout), nats per image": "kl"}.items():
        printed = re.search(rf"\| {re.escape(row)} \| ([-+0-9.]+) \|", card)
        assert printed is not None, row
        digits = 6 if key == "kl" else 4
        assert abs(float(printed.group(1)) - got[key]) <= 0.5 * 10 ** -digits + 1e-12, row


def test_the_table_and_numbers_of_docs_sae_md_are_the_shipped_ones():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "sae.md").read_text(encoding="utf-8")
    section = doc.split("## Shipped SAEs", 1)[1]
    for name in SAE_DATASETS:
        m = json.loads((SAES_DIR / name / "metrics.json").read_text())
        t = json.loads((SAES_DIR / name / "training.json").read_text())
        row = re.search(rf"\| `{name}` \| `([^`]+)` \|(.*)\|\n", section)
        assert row is not None and row.group(1) == t["data"]["hook"], name
        cells = [c.strip() for c in row.group(2).split("|")]
        ev, l0, dead, acc, agree, kl, minutes = cells
        assert (ev, l0, dead, agree, kl) == (f"{m['explained_variance']:.4f}", f"{m['l0']:.1f}",
                                             f"{m['dead_fraction']:.4f}", f"{m['agreement']:.4f}", f"{m['kl']:.6f}")
        assert acc == f"{m['accuracy_clean']:.4f} → {m['accuracy_spliced']:.4f}" and float(minutes) == t["wall_minutes_1_thread"]
        s = t["settings"]
        assert (s["architecture"], s["k"], s["positions"], s["epochs"], s["batch_size"], t["steps"],
                t["data"]["n_images"], t["data"]["images"]["seed"]) == ("topk", 16, "all", 2, 1024, 544, 4096, 1000)
        # "d_sae = 512 ... resample dead latents every 100 steps"; "d_sae = 256 ... resample every 20 steps", no AuxK
        got = (s["d_sae"], s["resample_every"], s.get("aux_k"))
        assert got == ((256, 20, None) if name in RETRAINED else (512, 100, None)), name
        assert 3000 <= m["n_tokens"] <= 3300 and m["accuracy_change"] == 0.0 and m["agreement"] == 1.0  # "about 3100"
        size = (SAES_DIR / name / "sae_weights.safetensors").stat().st_size
        assert (0.26e6 <= size <= 0.27e6) if name in RETRAINED else (0.5e6 <= size <= 0.55e6), name  # 0.26 / 0.5 MB
