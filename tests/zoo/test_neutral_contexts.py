"""Shipped zoo models call CAAP's image neutral contexts undecided (issue 16: a neutral context that is neutral).

The models were trained with neutral rows (scenes without objects, their blur and mean colour, ``zeros``,
``black``) towards the uniform distribution; these tests check the shipped weights on fresh empty scenes.
"""
import pytest
import torch

from vit_patching.images import baseline_images
from vit_patching.zoo import get_spec, load_model
from vit_patching.zoo.datasets import batch_from_scenes, render_scenes, sample_scenes

MODELS = ["toy-shapes", "toy-conjunction", "toy-relation"]
NEUTRALS = ["zeros", "black", "image_mean", "blur"]
MAX_P = 0.5  # issue 16's bound: no class more likely than 1/2 on a neutral context
# With two classes (toy-relation) the larger probability is >= 1/2 by construction; its bound is 0.6, a logit gap
# of 0.41 (measured on these 32 scenes: zeros 0.516, black 0.502, image_mean 0.575, blur 0.580).
MAX_P_BINARY = 0.6
N = 32
SEED = 4242  # neither a training seed nor one the cards are measured on


@pytest.fixture(scope="module", params=MODELS)
def model_and_scenes(request):
    name = request.param
    scenes = sample_scenes(get_spec(name).dataset, N, SEED)
    return name, load_model(name), scenes


def probabilities(model, images):
    with torch.no_grad():
        return torch.softmax(model(images), dim=-1)


@pytest.mark.parametrize("neutral", NEUTRALS)
def test_neutral_context_of_an_empty_scene_is_undecided(model_and_scenes, neutral):
    name, model, scenes = model_and_scenes
    empty = (render_scenes(scenes, objects="none") - 0.5) / 0.5  # background + pixel noise, no object
    x, per_image = baseline_images(empty, neutral, data_config=model.cfg.data_config)
    assert per_image == (neutral in ("image_mean", "blur"))
    if neutral == "zeros":
        assert torch.equal(x, torch.zeros(1, 3, 64, 64))  # the dataset-mean colour
    if neutral == "black":
        assert torch.equal(x, torch.full((1, 3, 64, 64), -1.0))  # (0 - 0.5) / 0.5
    if neutral == "image_mean":
        torch.testing.assert_close(x[:, :, 5, 7], empty.mean(dim=(2, 3)))
    probs = probabilities(model, x)
    assert probs.shape == (x.shape[0], model.cfg.n_classes)
    bound = MAX_P_BINARY if model.cfg.n_classes == 2 else MAX_P
    assert float(probs.amax()) <= bound, (name, neutral, probs.amax(-1).max().item())


def test_the_same_scenes_with_their_objects_are_classified(model_and_scenes):
    # the bound above is not met by a model that is undecided everywhere
    name, model, scenes = model_and_scenes
    batch = batch_from_scenes(scenes)
    probs = probabilities(model, batch.images)
    assert bool((probs.argmax(-1) == batch.labels).float().mean() >= 0.9), name
    assert float(probs.amax(-1).mean()) > 0.9, name
