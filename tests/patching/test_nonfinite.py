"""Non-finite outputs are refused, never returned (issue 21, item 3): one NaN planted in a weight makes every
experiment family raise :class:`~vit_patching.checks.NonFiniteError` naming what was non-finite and the images
(batch rows of the caller's input); the same call on the NaN-free model returns finite results."""
import copy

import pytest
import torch

from patch_toys import pair, tiny
from vit_patching.attribution import AttributionMethod, get_method
from vit_patching.checks import NonFiniteError
from vit_patching.circuits import (
    atp_heads, atp_layer_sweep, caap_estimate, eap, eap_ig, evaluate_circuit, select_circuit,
)
from vit_patching.circuits.evaluate import run_circuits
from vit_patching.patching import direct_path_patch, layer_sweep, patch_heads, path_patch, select_window
from vit_patching.patching.caap import caap
from vit_patching.patching.caap_shapley import caap_shapley

BATCH = 2
MODEL = tiny(depth=2)
CLEAN, CORRUPTED = pair(BATCH)
CIRCUIT = select_circuit(eap(MODEL, CLEAN, CORRUPTED, "logit"), top_n=5)


def _values(out):
    """The result tensors a family returns (to check the NaN-free control is finite)."""
    for name in ("values", "patch_map", "scores", "faithfulness", "map"):
        if isinstance(getattr(out, name, None), torch.Tensor):
            return getattr(out, name)
    return torch.tensor(out.table["ins_minus_del"].to_numpy()) if hasattr(out, "table") else out


# family -> (call, what the error names first: the logits of a pair's runs, the engine's target run, ...)
PAIR = {"clean logits"}
CAAP = {"source logits (the images' own run)"}
FAMILIES = {
    "layer_sweep": (lambda m: layer_sweep(m, CLEAN, CORRUPTED, "logit", sites="resid_pre", progress=False), PAIR),
    "patch_heads": (lambda m: patch_heads(m, CLEAN, CORRUPTED, "logit_diff", progress=False), PAIR),
    "path_patch": (lambda m: path_patch(m, CLEAN, CORRUPTED, "logit", senders=["L0H0"], progress=False), PAIR),
    "direct_path_patch": (lambda m: direct_path_patch(m, CLEAN, CORRUPTED, "logit", progress=False), PAIR),
    "caap": (lambda m: caap(m, CLEAN, window=(0, 1)), CAAP),
    "caap_noising": (lambda m: caap(m, CLEAN, window=(0, 1), direction="noising"),
                     CAAP),
    "select_window": (lambda m: select_window(m, CLEAN, [(0, 1), (1, 2)]),
                      CAAP),
    "atp_layer_sweep": (lambda m: atp_layer_sweep(m, CLEAN, CORRUPTED, "logit", sites="resid_pre"), PAIR),
    "atp_heads": (lambda m: atp_heads(m, CLEAN, CORRUPTED, "logit"), PAIR),
    "eap": (lambda m: eap(m, CLEAN, CORRUPTED, "logit"), PAIR),
    "eap_ig": (lambda m: eap_ig(m, CLEAN, CORRUPTED, "logit", steps=2), PAIR),
    "evaluate_circuit": (lambda m: evaluate_circuit(m, CIRCUIT, CLEAN, CORRUPTED, "logit"), PAIR),
    "caap_estimate": (lambda m: caap_estimate(m, CLEAN, window=(0, 1)), CAAP),
    "caap_shapley": (lambda m: caap_shapley(m, CLEAN, window=(0, 1), n_permutations=2), CAAP),
}
for _name in ("rollout", "gradcam", "integrated_gradients", "occlusion", "caap"):
    FAMILIES[f"attribution:{_name}"] = (
        lambda m, n=_name: get_method(n, m).attribute(CLEAN), {"logits (of the images, for the target class)"})


def _with_nan(model):
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.blocks[1].mlp.W_out[3, 5] = float("nan")
    return bad


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_nan_weight_is_refused_naming_the_images(family):
    call, what = FAMILIES[family]
    out = _values(call(MODEL))  # the control: the same call without the NaN
    assert torch.isfinite(torch.as_tensor(out)[~torch.as_tensor(out).isnan()]).all()
    assert not torch.as_tensor(out).isnan().all()
    with pytest.raises(NonFiniteError) as err:
        call(_with_nan(MODEL))
    assert err.value.what in what
    assert err.value.indices == list(range(BATCH))
    assert str(err.value).startswith(f"{err.value.what}: expected finite values, got NaN or infinity in batch row(s)")


def test_non_finite_patched_scores_name_the_images_not_the_rows():
    nan = torch.tensor(float("nan"))

    def nan_for_image_1_when_patched(logits, image_index):  # the two unpatched runs have one row per image
        score = logits[:, 0]
        return torch.where((image_index == 1) & (logits.shape[0] > BATCH), nan, score)

    with pytest.raises(NonFiniteError, match=r"patched scores: .* batch row\(s\) \[1\]") as err:
        layer_sweep(MODEL, CLEAN, CORRUPTED, nan_for_image_1_when_patched, sites="resid_pre", batch_size=7,
                    progress=False)
    assert err.value.indices == [1]


class _NanForImage(AttributionMethod):
    name = "nan_for_image_2"
    native = "patch"

    def _attribute(self, images, target, batch_size):
        maps = torch.zeros(images.shape[0], *self.model.grid_size_for(images))
        maps[images[:, 0, 0, 0] == self._marker] = float("nan")
        return maps


def test_a_non_finite_attribution_map_names_its_image_across_chunks():
    images = torch.cat([CLEAN, CORRUPTED[:1]])
    method = _NanForImage(MODEL)  # not registered: the registry is global
    method._marker = images[2, 0, 0, 0]
    with pytest.raises(NonFiniteError, match=r"nan_for_image_2 map: .* \[2\]") as err:
        method.attribute(images, target=0, batch_size=1)  # one image per chunk: the chunk index is not the row
    assert err.value.indices == [2]


def test_non_finite_circuit_scores_name_the_image():
    masks = CIRCUIT.mask[None]

    def nan_for_image_1(logits, image_index):  # run_circuits calls the metric on the ablated runs only
        return torch.where(image_index == 1, torch.tensor(float("nan")), logits[:, 0])

    with pytest.raises(NonFiniteError, match=r"circuit scores .* batch row\(s\) \[1\]") as err:
        run_circuits(MODEL, masks, CLEAN, CORRUPTED, nan_for_image_1)
    assert err.value.indices == [1]
    values, *_ = run_circuits(MODEL, masks, CLEAN, CORRUPTED, lambda logits, ids: logits[:, 0])  # the control
    assert torch.isfinite(values).all()


def test_a_non_finite_metric_gradient_names_the_image():
    def nan_gradient_for_image_1(logits, image_index):
        # sqrt(x^2 * 0) = 0 is a finite score for row 1, but its gradient is inf * 0 = NaN; other rows: |x|
        return torch.sqrt(logits[:, 0] ** 2 * (image_index != 1))

    with pytest.raises(NonFiniteError, match=r"metric gradient at 'blocks\.\d\.hook_resid_pre'.* \[1\]") as err:
        atp_layer_sweep(MODEL, CLEAN, CORRUPTED, nan_gradient_for_image_1, sites="resid_pre")
    assert err.value.indices == [1]
