"""Attribution baselines behind one interface: method name -> maps at patch and pixel resolution, batched.

Methods (:func:`available_methods`):

======================  =========================================================  ======  ====================
name                    method                                                     native  cost per image
======================  =========================================================  ======  ====================
``raw_attention``       head-mean attention of the last layer, readout row         patch   1 fwd
``rollout``             attention rollout (Abnar & Zuidema 2020)                   patch   1 fwd
``gae``                 gradient-weighted attention (Chefer et al. 2021b)          patch   1 fwd + 1 bwd
``gradcam``             Grad-CAM on ``blocks[-1].ln1`` pre-affine tokens           patch   1 fwd + 1 bwd
``integrated_gradients`` Integrated Gradients (captum)                             pixel   m fwd + m bwd
``smoothgrad``          SmoothGrad, ``NoiseTunnel(Saliency)`` (captum)             pixel   n fwd + n bwd
``occlusion``           patch occlusion with a baseline image (captum)             patch   1 + N fwd
``rise``                RISE random masks                                          pixel   M fwd
``atman``               AtMan attention suppression                                patch   1 + N fwd
``caap``                CAAP (:func:`vit_patching.patching.caap.caap`)             patch   ~N fwd (partial)
``caap_shapley``        coalition (Shapley) CAAP, k permutations                   patch   ~kN fwd (partial)
``random``              random map (sanity)                                        patch   0
``center``              centred Gaussian (sanity)                                  patch   0
======================  =========================================================  ======  ====================

Example:
    >>> from vit_patching.attribution import get_method, available_methods
    >>> maps = get_method("gae", model).attribute(images)          # target = predicted class
    >>> maps.patch_map.shape, maps.pixel_map.shape, maps.target.shape
    (torch.Size([2, 4, 4]), torch.Size([2, 32, 32]), torch.Size([2]))

Every method gives the same map on a model and on its weight-processed twin (``HookedViT.from_timm(...,
fold_ln=True, center_writing_weights=True)``; also ``fold_value_biases=True`` for all but ``gae``, whose
gradients at the attention pattern depend on where the value bias sits). Baseline images (occlusion, RISE,
Integrated Gradients) use the one vocabulary of :mod:`vit_patching.images`.
"""
from vit_patching.attribution.base import (
    AttributionMaps,
    AttributionMethod,
    available_methods,
    get_method,
    image_seeds,
    method_class,
    patch_sums,
    register_method,
)

__all__ = [
    "AttributionMaps",
    "AttributionMethod",
    "available_methods",
    "get_method",
    "image_seeds",
    "method_class",
    "patch_sums",
    "register_method",
]
