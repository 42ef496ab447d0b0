"""The shipped linear probe ``toy-clip-shape``: toy-clip's image tower read without a head (CLS after ``ln_post``,
before ``proj``) by a LinearProbe predicting the object's shape. It loads, reads exactly what open_clip's tower
computes before its projection, refuses another model, and reaches its card's held-out accuracy."""
import re

import pytest
import torch
from torch.nn import functional as F

import vit_patching as vp
from vit_patching.model import HookedViT
from vit_patching.readouts import LinearProbe
from vit_patching.zoo import PROBES, load_probe, load_probe_model
from vit_patching.zoo.clip import load_open_clip_model
from vit_patching.zoo.registry import WEIGHTS_DIR

CARD = WEIGHTS_DIR / "toy-clip-shape-probe.md"


@pytest.fixture(scope="module")
def probed():
    return load_probe_model("toy-clip-shape")


def test_shipped_probe_loads_with_its_metadata():
    probe = load_probe("toy-clip-shape")
    assert isinstance(probe, LinearProbe) and PROBES == {"toy-clip-shape": "toy-clip"}
    assert probe.features == "cls" and probe.n_prefix == 1
    assert probe.class_names == ["circle", "square", "triangle", "plus"]
    assert tuple(probe.weight.shape) == (4, 128)  # the tower's width: read before the 64-d projection
    with pytest.raises(ValueError, match="name: expected one of"):
        load_probe("toy-clip-colour")


def test_probe_reads_open_clips_tower_before_the_projection(probed):
    """Scores = probe applied to open_clip's own ``ln_post`` output at CLS (captured by a forward hook)."""
    oc = load_open_clip_model("toy-clip")
    batch = vp.load_dataset("captions", n=8, seed=11)
    seen = {}
    handle = oc.visual.ln_post.register_forward_hook(lambda m, i, o: seen.__setitem__("ln_post", o))
    try:
        with torch.no_grad():
            oc.encode_image(batch.images)
    finally:
        handle.remove()
    probe = probed.readout
    expected = F.linear(seen["ln_post"][:, 0], probe.weight, probe.bias)
    with torch.no_grad():
        got = probed(batch.images)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_shipped_probe_refuses_another_model():
    probe = load_probe("toy-clip-shape")
    oc = load_open_clip_model("toy-clip")
    with torch.no_grad():  # the same architecture, one weight of the last block changed
        oc.visual.transformer.resblocks[-1].mlp.c_fc.weight[0, 0] += 1e-3
    other = HookedViT.from_open_clip(oc)
    with pytest.raises(ValueError, match="readout: expected a probe fitted on this model .*fingerprint"):
        other.with_readout(probe)
    with pytest.raises(ValueError, match="readout: expected a probe fitted on this model .*fingerprint"):
        vp.load_model("toy-shapes").with_readout(probe)  # another zoo model of the same width (128)


def test_shipped_probe_reaches_its_cards_heldout_accuracy(probed):
    """The card's number, recomputed through the model's full forward on the same 2048 fresh images."""
    text = CARD.read_text()
    stated = float(re.search(r"\*\*Held-out accuracy\*\*: \*\*([0-9.]+)\*\* on 2048 fresh images", text).group(1))
    seed = int(re.search(r'load_dataset\("captions", 2048,\s+seed=(\d+)\)', text).group(1))
    batch = vp.load_dataset("captions", n=2048, seed=seed)
    with torch.no_grad():
        pred = torch.cat([probed(batch.images[i : i + 512]).argmax(-1) for i in range(0, 2048, 512)])
    acc = float((pred == batch.labels % 4).float().mean())
    assert abs(acc - stated) <= 5e-5  # stated to 4 decimals
