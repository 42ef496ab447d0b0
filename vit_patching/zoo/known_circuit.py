"""A ViT whose circuit is known: weights set by hand so the task provably flows through four edges.

The task: is the marked patch (grid cell ``(1, 1)``, position 6 after CLS) more red than green? The corrupted
image of a pair is the clean image with that patch's red and green channels swapped, so the two images differ
in one patch and have opposite labels. The model is a timm ``VisionTransformer`` (2 blocks, 4 heads, width 32,
image 32, patch 8, CLS pooling, 2 classes) whose weights are random except where set:

* ``embed``: the patch embedding writes ``mean(R - G)`` of each patch along a direction ``u``; the rest of
  the embedding is random but blind to swapping R and G. The position embedding of the marked patch carries
  a marker ``k_p``, the CLS token a marker ``k_cls``.
* ``L0H0`` (circuit): its query is a constant (``b_Q``) and its key reads ``k_p``, so every position attends
  to the marked patch only (weights off it are exactly 0 in float32); its value reads ``u``, its output
  writes ``u2``.
* ``L1H0`` (circuit): attends to CLS (key reads ``k_cls``), reads ``u2``, writes ``u3``.
* ``MLP1`` (circuit): a pair of GELU neurons ``GELU(g z - t) - GELU(-g z - t)`` of ``z = u3 . LN(x)``, a soft
  threshold, writes ``r``; the classifier reads ``+r`` (class 1, "red") and ``-r`` (class 0, "green").
* Distractors: ``L0H1`` copies the same feature as ``L0H0`` and writes ``w``; ``MLP0`` thresholds ``u2`` and
  writes ``w2``. Nothing reads ``w`` or ``w2``, so their edges change nothing, but they carry the clean /
  corrupted difference and bend the LayerNorm gradients, which first-order scorers see.
* Every other head and neuron is random and reads and writes only the subspace orthogonal to all those
  directions (biases, tokens and position embeddings too).

Why the four edges are the whole circuit (``KNOWN_EDGES``, exactly, up to float rounding):
``u, u2, w, w2, u3, r`` are orthonormal, have zero mean and are orthogonal to everything else any component
writes. Each of them is written by one sender as ``s * a`` with ``s = +1`` in the clean and ``-1`` in the
corrupted image (every writer is odd in what it reads), so in any mixture of clean and corrupted edge values
each LayerNorm sees the same mean and variance: LayerNorm is exactly sign-equivariant along these directions.
The random components therefore compute the same thing in every run (their edges carry no difference), the
distractors' and the direct paths' flips are read by no one, and the only dependence of the logit difference on
the image's label runs ``embed -> L0H0.v``, ``L0H0 -> L1H0.v``, ``L1H0 -> MLP1``, ``MLP1 -> logits``.
Flipping any one of them flips everything downstream: the circuit with that edge ablated is the corrupted
run (faithfulness 0), and the circuit of the four edges with every other edge ablated is the clean run
(faithfulness 1); ``tests/circuits/test_known_circuit.py`` checks both to 3e-7 (1e-15 in float64).

Example:
    >>> model = known_circuit_model()
    >>> pairs = known_circuit_pairs(8, seed=0)
    >>> (model(pairs.clean).argmax(-1) == pairs.clean_labels).all()
    tensor(True)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from vit_patching.checks import check_positive_int, check_seed
from vit_patching.model import HookedViT
from vit_patching.patching.metrics import logit_diff

__all__ = ["KNOWN_EDGES", "KNOWN_TIMM_KWARGS", "MARKED_PATCH", "KnownCircuitPairs", "known_circuit_model",
           "known_circuit_pairs", "known_circuit_timm"]

#: The circuit of :func:`known_circuit_model`, as ``(sender, receiver)`` edges of ``circuits.Graph``.
KNOWN_EDGES: tuple[tuple[str, str], ...] = (
    ("embed", "L0H0.v"), ("L0H0", "L1H0.v"), ("L1H0", "MLP1"), ("MLP1", "logits"),
)

#: timm ``VisionTransformer`` arguments of the model (4 x 4 patches + CLS = 17 tokens).
KNOWN_TIMM_KWARGS = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=4, mlp_ratio=4.0,
                         num_classes=2, class_token=True, global_pool="token", qkv_bias=True)

#: Grid cell ``(row, column)`` of the patch whose colour decides the class.
MARKED_PATCH = (1, 1)

_D, _H, _DH, _P, _GRID = 32, 4, 8, 8, 4
_POS = 1 + MARKED_PATCH[0] * _GRID + MARKED_PATCH[1]  # token position of the marked patch (after CLS)
_FLIP = ("u", "u2", "w", "w2", "u3", "r")  # sign-flipped between clean and corrupted
_MARK = ("k_p", "k_cls")


def _directions(g: torch.Generator) -> tuple[dict[str, Tensor], Tensor]:
    """Orthonormal zero-mean special directions and the projector onto their orthogonal complement."""
    a = torch.randn(_D, len(_FLIP) + len(_MARK), generator=g, dtype=torch.float64)
    a = a - a.mean(0, keepdim=True)  # zero mean: LayerNorm's centring leaves them alone
    q, _ = torch.linalg.qr(a)
    dirs = {n: q[:, i] for i, n in enumerate(_FLIP + _MARK)}
    return dirs, torch.eye(_D, dtype=torch.float64) - q @ q.T


def _check_dtype(dtype: object) -> None:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype!r}")


@torch.no_grad()
def known_circuit_timm(seed: int = 0, dtype: torch.dtype = torch.float32):
    """The timm ``VisionTransformer`` of :func:`known_circuit_model` (eval mode).

    Args:
        seed: Seed of the random (non-circuit) weights; the circuit is the same for every seed.
        dtype: ``torch.float32`` or ``torch.float64`` (the weights are built in float64 and rounded once, so a
            float64 model's special directions are orthonormal to float64 precision).

    Returns:
        The timm model.

    Example:
        >>> known_circuit_timm().blocks[0].attn.qkv.bias.shape
        torch.Size([96])
    """
    from timm.models.vision_transformer import VisionTransformer

    check_seed(seed)
    _check_dtype(dtype)
    g = torch.Generator().manual_seed(seed)
    dirs, proj = _directions(g)

    def rand(*shape: int, scale: float = 1.0) -> Tensor:
        return scale * torch.randn(*shape, generator=g, dtype=torch.float64)

    def reads_inv(w: Tensor) -> Tensor:  # [out, D] reading only the invariant subspace
        return w @ proj

    def writes_inv(w: Tensor) -> Tensor:  # [D, ...] writing only the invariant subspace
        return proj @ w

    sd: dict[str, Tensor] = {}
    # Patch embedding: mean(R - G) along u; a random rest that sees R and G only through R + G.
    m = rand(_D, 3, _P, _P, scale=(3 * _P * _P) ** -0.5)
    m[:, 1] = m[:, 0]
    m = writes_inv(m.reshape(_D, -1)).reshape(_D, 3, _P, _P)
    rg = torch.zeros(3, _P, _P, dtype=torch.float64)
    rg[0], rg[1] = 1.0 / _P**2, -1.0 / _P**2
    sd["patch_embed.proj.weight"] = m + 3.0 * dirs["u"][:, None, None, None] * rg
    sd["patch_embed.proj.bias"] = writes_inv(rand(_D, scale=0.3))
    sd["cls_token"] = (writes_inv(rand(_D, scale=0.3)) + 2.0 * dirs["k_cls"]).view(1, 1, _D)
    pos = writes_inv(rand(_D, 1 + _GRID * _GRID, scale=0.3)).T.clone()
    pos[_POS] += 2.0 * dirs["k_p"]
    sd["pos_embed"] = pos[None]

    def copy_head(block: str, h: int, key: str, read: str, write: str, gain: float) -> None:
        """Head ``h`` attends (from every position) to the token holding ``key``, copies ``read`` to ``write``."""
        rows = slice(h * _DH, (h + 1) * _DH)
        qkv_w, qkv_b = sd[f"{block}.attn.qkv.weight"], sd[f"{block}.attn.qkv.bias"]
        qkv_w[rows] = 0.0
        qkv_b[rows] = 0.0
        qkv_b[h * _DH] = 2000.0  # constant query: scores ~100s apart, past float32 and float64 softmax underflow
        kr, vr = slice(_D + h * _DH, _D + (h + 1) * _DH), slice(2 * _D + h * _DH, 2 * _D + (h + 1) * _DH)
        qkv_w[kr] = 0.0
        qkv_b[kr] = 0.0
        qkv_w[_D + h * _DH] = dirs[key]
        qkv_w[vr] = 0.0
        qkv_b[vr] = 0.0
        qkv_w[2 * _D + h * _DH] = dirs[read]
        sd[f"{block}.attn.proj.weight"][:, rows] = 0.0
        sd[f"{block}.attn.proj.weight"][:, h * _DH] = gain * dirs[write]

    def odd_pair(block: str, read: str, write: str, gain: float, threshold: float) -> None:
        """Neurons 0, 1: ``GELU(g z - t) - GELU(-g z - t)`` of ``z = read . LN(x)``, written along ``write``."""
        fc1_w, fc1_b, fc2_w = (sd[f"{block}.mlp.fc1.weight"], sd[f"{block}.mlp.fc1.bias"],
                               sd[f"{block}.mlp.fc2.weight"])
        fc1_w[0], fc1_w[1] = gain * dirs[read], -gain * dirs[read]
        fc1_b[0] = fc1_b[1] = -threshold
        fc2_w[:, 0], fc2_w[:, 1] = dirs[write], -dirs[write]

    hidden = int(_D * 4)
    for l in range(2):
        b = f"blocks.{l}"
        for norm in ("norm1", "norm2"):  # weight 1, bias 0: LayerNorm only centres and scales
            sd[f"{b}.{norm}.weight"] = torch.ones(_D, dtype=torch.float64)
            sd[f"{b}.{norm}.bias"] = torch.zeros(_D, dtype=torch.float64)
        sd[f"{b}.attn.qkv.weight"] = reads_inv(rand(3 * _D, _D, scale=_D**-0.5))
        sd[f"{b}.attn.qkv.bias"] = rand(3 * _D, scale=0.3)
        sd[f"{b}.attn.proj.weight"] = writes_inv(rand(_D, _D, scale=_D**-0.5))
        sd[f"{b}.attn.proj.bias"] = writes_inv(rand(_D, scale=0.3))
        sd[f"{b}.mlp.fc1.weight"] = reads_inv(rand(hidden, _D, scale=_D**-0.5))
        sd[f"{b}.mlp.fc1.bias"] = rand(hidden, scale=0.3)
        sd[f"{b}.mlp.fc2.weight"] = writes_inv(rand(_D, hidden, scale=hidden**-0.5))
        sd[f"{b}.mlp.fc2.bias"] = writes_inv(rand(_D, scale=0.3))
    copy_head("blocks.0", 0, "k_p", "u", "u2", 3.0)      # circuit
    copy_head("blocks.0", 1, "k_p", "u", "w", 3.0)       # distractor: same copy, written where no one reads
    copy_head("blocks.1", 0, "k_cls", "u2", "u3", 3.0)   # circuit
    odd_pair("blocks.0", "u2", "w2", 4.0, 1.0)           # distractor
    odd_pair("blocks.1", "u3", "r", 4.0, 1.0)            # circuit: soft threshold
    sd["norm.weight"], sd["norm.bias"] = torch.ones(_D, dtype=torch.float64), torch.zeros(_D, dtype=torch.float64)
    head = reads_inv(rand(2, _D, scale=0.3 * _D**-0.5))
    head[1] += 4.0 * dirs["r"]
    head[0] -= 4.0 * dirs["r"]
    sd["head.weight"], sd["head.bias"] = head, torch.zeros(2, dtype=torch.float64)

    model = VisionTransformer(**KNOWN_TIMM_KWARGS).to(dtype)
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True)
    return model.eval()


def known_circuit_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> HookedViT:
    """The hand-built ViT whose task flows through :data:`KNOWN_EDGES` exactly (see the module docstring).

    Args:
        seed: Seed of the random (non-circuit) weights.
        dtype: ``torch.float32`` or ``torch.float64``.

    Returns:
        A HookedViT (2 blocks x 4 heads, 17 tokens, 2 classes: 0 = green, 1 = red).

    Example:
        >>> model = known_circuit_model()
        >>> model.cfg.n_layers, model.cfg.n_heads
        (2, 4)
    """
    _check_dtype(dtype)
    return HookedViT.from_timm(known_circuit_timm(seed, dtype))


@dataclass
class KnownCircuitPairs:
    """Clean / corrupted image pairs of the known-circuit task.

    Attributes:
        clean: Clean images ``[batch, 3, 32, 32]`` (normalised: values in [-1, 1]).
        corrupted: The same images with the marked patch's red and green channels swapped.
        clean_labels: 1 where the marked patch is redder than green, else 0 ``[batch]``.
        corrupted_labels: ``1 - clean_labels``.

    Example:
        >>> pairs = known_circuit_pairs(4)
        >>> scores = eap(model, pairs.clean, pairs.corrupted, pairs.metric())
    """

    clean: Float[Tensor, "batch channel height width"]
    corrupted: Float[Tensor, "batch channel height width"]
    clean_labels: Int[Tensor, " batch"]
    corrupted_labels: Int[Tensor, " batch"]

    def metric(self):
        """``logit[clean label] - logit[corrupted label]`` per image (:func:`~vit_patching.patching.logit_diff`)."""
        return logit_diff(self.clean_labels, self.corrupted_labels)


def known_circuit_pairs(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> KnownCircuitPairs:
    """``n`` random image pairs of the known-circuit task (deterministic in ``seed``).

    Each clean image is noise in [-1, 1] with the marked patch filled by one colour whose red and green
    channels differ by at least 0.6 (half the images redder, half greener, in random order); the corrupted
    image swaps that patch's red and green channels.

    Args:
        n: Number of pairs.
        seed: Random seed.
        dtype: Image dtype.

    Returns:
        :class:`KnownCircuitPairs`.

    Example:
        >>> known_circuit_pairs(6, seed=1).clean.shape
        torch.Size([6, 3, 32, 32])
    """
    check_positive_int(n, "n")
    check_seed(seed)
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=g) * 2 - 1
    sign = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)[torch.randperm(n, generator=g)]
    base = torch.rand(n, generator=g) * 0.4 - 0.2
    half = 0.3 + 0.4 * torch.rand(n, generator=g)  # |R - G| / 2 in [0.3, 0.7]
    blue = torch.rand(n, generator=g) * 2 - 1
    r, c = MARKED_PATCH
    cell = (slice(None), slice(None), slice(r * _P, (r + 1) * _P), slice(c * _P, (c + 1) * _P))
    colour = torch.stack([base + sign * half, base - sign * half, blue], dim=1)  # [n, 3]
    images[cell] = colour[:, :, None, None]
    corrupted = images.clone()
    corrupted[cell] = colour[:, [1, 0, 2], None, None]  # red and green swapped
    labels = (sign > 0).long()
    return KnownCircuitPairs(images.to(dtype), corrupted.to(dtype), labels, 1 - labels)
