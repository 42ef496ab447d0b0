"""toy-clip as a HookedViT: the converted image tower read through its own captions equals open_clip's zero-shot
logits, and the CLI runs CAAP on it (default captions, user prompts, its dataset; another dataset refused)."""
import pytest
import torch

import vit_patching as vp
from vit_patching.cli import main
from vit_patching.zoo.clip import CLIP_MODELS, clip_captions, load_open_clip_model, load_zero_shot_model, zero_shot_logits


@pytest.fixture(scope="module")
def toy_clip():
    return load_zero_shot_model("toy-clip")


def test_load_model_is_the_zero_shot_model_and_equals_open_clip(toy_clip):
    batch = vp.load_dataset("captions", n=8, seed=3)
    oc = load_open_clip_model("toy-clip")
    with torch.no_grad():
        expected = zero_shot_logits(oc, batch.images)
        got = toy_clip(batch.images)
        via_load_model = vp.load_model("toy-clip")(batch.images)
    assert got.shape == (8, 16) and CLIP_MODELS["toy-clip"] == "captions"
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)  # logit_scale 14: ~1e-6 relative
    assert torch.equal(via_load_model, got)
    assert toy_clip.readout.class_names == list(clip_captions("toy-clip"))
    assert (got.argmax(-1) == batch.labels).float().mean() >= 0.75  # 97.7 % on 4096 images (card)


def test_zero_shot_model_with_user_prompts_scores_only_those(toy_clip):
    batch = vp.load_dataset("captions", n=4, seed=5)
    two = load_zero_shot_model("toy-clip", class_names=["a red circle", "a blue square"])
    full = toy_clip(batch.images)
    red_circle, blue_square = clip_captions().index("a red circle"), clip_captions().index("a blue square")
    torch.testing.assert_close(two(batch.images), full[:, [red_circle, blue_square]], rtol=0, atol=2e-5)


def test_cli_caap_on_toy_clip_names_the_zero_shot_readout(tmp_path):
    out = tmp_path / "r.html"
    assert main(["caap", "--model", "toy-clip", "--sample", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "ZeroShotHead (16 scores: a red circle" in text
    out2 = tmp_path / "r2.html"
    assert main(["caap", "--model", "toy-clip", "--sample", "1", "--readout", "zero-shot",
                 "--classes", "a red circle,a blue square,a green plus", "--out", str(out2)]) == 0
    assert "ZeroShotHead (3 scores: a red circle, a blue square, a green plus)" in out2.read_text()


def test_cli_refuses_another_dataset_for_toy_clip(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["caap", "--model", "toy-clip", "--dataset", "shapes", "--n", "2", "--out", str(tmp_path / "r")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--dataset" in err and "toy-clip was trained on --dataset captions" in err
