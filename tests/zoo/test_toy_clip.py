"""The shipped zero-shot model toy-clip: loads offline, is what its card says, and its scores are CLIP's."""
import json
import re
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIP
from safetensors.torch import load_file

from vit_patching.images import baseline_images
from vit_patching.zoo import available_models, load_dataset, model_card, zero_shot_models
from vit_patching.zoo.clip import (
    TOY_CLIP_CONFIG,
    caption_embeddings,
    clip_captions,
    clip_tokenizer,
    load_open_clip_model,
    zero_shot_logits,
)
from vit_patching.zoo.datasets import CAPTION_CLASS_NAMES, render_scenes, sample_scenes
from vit_patching.zoo.registry import WEIGHTS_DIR

#: The card's promise: zero-shot accuracy on fresh images at least this (the card states it on 4096 images).
STATED_ACCURACY = 0.95
RECORD = json.loads((WEIGHTS_DIR / "toy-clip.json").read_text())


@pytest.fixture(scope="module")
def model() -> CLIP:
    return load_open_clip_model("toy-clip")


def test_loads_offline_as_the_recorded_architecture_with_the_shipped_weights(model):
    assert isinstance(model, CLIP) and not model.training
    assert RECORD["config"] == json.loads(json.dumps(TOY_CLIP_CONFIG))  # the json records the code's config
    shipped = load_file(str(WEIGHTS_DIR / "toy-clip.safetensors"))
    state = model.state_dict()
    assert state.keys() == shipped.keys()
    assert all(torch.equal(state[k], shipped[k]) for k in shipped)
    v = model.visual  # the standard image-tower options that HookedViT.from_open_clip reproduces
    assert v.grid_size == (8, 8) and v.pool_type == "tok" and v.attn_pool is None
    assert not v.final_ln_after_pool and isinstance(v.patch_dropout, torch.nn.Identity)
    assert isinstance(v.ln_pre, torch.nn.LayerNorm) and v.proj.shape == (128, 64)
    assert [b.attn.num_heads for b in v.transformer.resblocks] == [4, 4, 4, 4]
    assert model.visual.preprocess_cfg["mean"] == (0.5, 0.5, 0.5) and model.visual.preprocess_cfg["std"] == (0.5,) * 3
    assert model.context_length == 12 and model.vocab_size == 49408


def test_the_bundled_tokenizer_works_offline_at_the_model_context_length():
    tokens = clip_tokenizer("toy-clip")(list(CAPTION_CLASS_NAMES))
    plain = open_clip.get_tokenizer("ViT-B-32")(list(CAPTION_CLASS_NAMES))  # 77 tokens
    assert tokens.shape == (16, 12) and torch.equal(tokens, plain[:, :12])
    assert (plain[:, 12:] == 0).all()  # nothing was cut: every caption fits in 12 tokens
    assert clip_captions("toy-clip") == CAPTION_CLASS_NAMES


def test_zero_shot_scores_are_open_clips_own_forward(model):
    images = load_dataset("captions", 8, seed=3).images
    tokens = clip_tokenizer()(list(CAPTION_CLASS_NAMES))
    with torch.no_grad():
        image_features, text_features, scale = model(images, tokens)  # CLIP.forward: normalised features, exp scale
        ours = zero_shot_logits(model, images)
        text = caption_embeddings(model, CAPTION_CLASS_NAMES)
    torch.testing.assert_close(ours, scale * image_features @ text_features.T, rtol=0, atol=1e-5)
    torch.testing.assert_close(text, text_features, rtol=0, atol=0)


def test_zero_shot_accuracy_on_fresh_images_meets_the_card(model):
    data = load_dataset("captions", 256, seed=2_000_000_011)  # neither a training nor a card seed
    with torch.no_grad():
        accuracy = float((zero_shot_logits(model, data.images).argmax(1) == data.labels).float().mean())
    assert accuracy >= STATED_ACCURACY
    assert RECORD["zero_shot_acc"] >= STATED_ACCURACY and RECORD["heldout_n"] == 4096


def test_recorded_single_image_neutrals_are_the_shipped_weights(model):
    """``zeros`` and ``black`` are one image each, so their recorded distributions can be recomputed exactly."""
    config = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    like = torch.zeros(1, 3, 64, 64)
    for row in RECORD["neutrals"]:
        if row["neutral"] in ("zeros", "black"):
            with torch.no_grad():
                probs = zero_shot_logits(model, baseline_images(like, row["neutral"], data_config=config)[0]).softmax(1)
            assert CAPTION_CLASS_NAMES[int(probs.argmax())] == row["caption"]
            assert abs(float(probs.max()) - row["p"]) < 1e-5



def test_recorded_empty_scene_predictions_are_recomputed(model):
    """The card's ``none`` row: the same 256 empty scenes, drawn again, give the recorded probabilities."""
    row = next(r for r in RECORD["neutrals"] if r["neutral"] == "none")
    scenes = sample_scenes("captions", row["n"], RECORD["neutral_seed"])
    empty = (render_scenes(scenes, objects="none") - 0.5) / 0.5
    with torch.no_grad():
        probs = zero_shot_logits(model, empty).softmax(1)
    assert abs(float(probs.amax(1).max()) - row["max_max_p"]) < 1e-5
    assert abs(float(probs.amax(1).mean()) - row["mean_max_p"]) < 1e-5
    assert CAPTION_CLASS_NAMES[int(probs.mean(0).argmax())] == row["caption"]


def test_card_states_the_json_numbers():
    card = model_card("toy-clip")
    assert card.startswith("# toy-clip")
    assert f"**{RECORD['zero_shot_acc']:.4f}** on 4096 fresh images" in card
    assert f"seed={RECORD['heldout_seed']}" in card
    worst = max(r["max_max_p"] for r in RECORD["neutrals"] if r["source"] == "empty scene")
    assert f"it is **{worst:.3f}**" in card
    assert f"learnt `logit_scale.exp()` = {RECORD['logit_scale']:.2f}." in card
    assert f"Colour of the predicted caption right: {RECORD['colour_acc']:.4f}" in card
    for what, value in RECORD["probes"]:
        assert f"| {what} | {value:.3f} |" in card
    for row in RECORD["neutrals"]:
        assert f"| {row['source']} | {row['neutral']} | {row['caption']}, {row['p']:.4f} |" in card
    assert f"{RECORD['train_wall_s'] / 60:.1f} min training" in card
    steps = re.search(r"seed 0; (\d+) steps x batch (\d+)", card)
    assert steps and int(steps[1]) == RECORD["recipe"]["steps"] and int(steps[2]) == RECORD["recipe"]["batch_size"]
    assert RECORD["history"][-1]["step"] == RECORD["recipe"]["steps"]


def test_listing_keeps_the_timm_models_apart_and_names_are_checked():
    assert zero_shot_models() == ["toy-clip"]
    assert "toy-clip" not in available_models()  # load_model / the CLI take timm-backed models only (for now)
    with pytest.raises(ValueError, match=r"name: expected one of \['toy-clip'\], got 'x'"):
        load_open_clip_model("x")
    with pytest.raises(ValueError, match=r"captions: expected a non-empty sequence of non-empty strings, got \(\)"):
        zero_shot_logits(load_open_clip_model(), torch.zeros(1, 3, 64, 64), ())
    with pytest.raises(ValueError, match=r"name: expected one of the zoo models .*'toy-clip'.*got 'x'"):
        model_card("x")


def test_docstring_examples_run():
    import doctest

    import vit_patching.zoo.clip as clip

    result = doctest.testmod(clip, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0, result


@pytest.fixture()
def train_script(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "scripts"))
    import train_toy_clip

    return train_toy_clip


def test_training_loss_is_open_clips_clip_loss_with_one_image_per_caption(train_script):
    from open_clip.loss import ClipLoss

    gen = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(16, 8, generator=gen), dim=1)
    text = torch.nn.functional.normalize(torch.randn(16, 8, generator=gen), dim=1)
    labels = torch.randperm(16, generator=gen)  # image i shows caption labels[i]
    scale = torch.tensor(14.0)
    ours = train_script.contrastive_loss(scale * image @ text.T, labels, n_images=16)
    theirs = ClipLoss()(image, text[labels], scale)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_training_loss_with_repeated_captions_and_neutral_rows_by_hand(train_script):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 4, generator=gen) * 3  # 5 images, 2 neutral rows, 4 captions
    labels = torch.tensor([2, 0, 2, 2, 3])
    image_to_text = []
    for row in range(7):
        logp = logits[row].log_softmax(0)
        image_to_text.append(-logp[labels[row]] if row < 5 else -logp.mean())  # neutral rows: uniform target
    text_to_image = []
    for caption in (0, 2, 3):  # the captions present; every row (neutral ones too) competes
        logp = logits[:, caption].log_softmax(0)
        rows = [i for i in range(5) if labels[i] == caption]
        text_to_image.append(-sum(logp[i] for i in rows) / len(rows))
    expected = (torch.stack(image_to_text).mean() + torch.stack(text_to_image).mean()) / 2
    torch.testing.assert_close(train_script.contrastive_loss(logits, labels, n_images=5), expected, rtol=0, atol=1e-6)
