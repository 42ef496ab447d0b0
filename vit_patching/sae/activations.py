"""Activations for SAE training and evaluation, streamed in chunks of images (memory bounded by the chunk).

:func:`image_set` turns what a user passes as ``data`` (a zoo data set name, an image folder, a tensor of images or
a :class:`vit_patching.runs.dataset.ImageSet`) into an ``ImageSet``: the dataset runs' image sources, loaded
``[s, e)`` at a time. :class:`ModelActivations` runs the model on one chunk of images (stopping after the hook's
block) and returns the chunk's tokens ``[tokens, d_in]`` at the hook, over the SAE's ``positions``; nothing of
other chunks is held. :class:`TensorActivations` serves a tensor of activations (synthetic data, precomputed
caches) through the same interface. In a sharded run (``torch.distributed`` initialised, ``world_size > 1``) the
forward batches of a chunk are split over the ranks and broadcast, so every rank holds the same chunk, equal bit
for bit to the chunk one process computes (the forward batches have the same shapes either way).

Example:
    >>> source = ModelActivations(model, "blocks.2.hook_resid_pre", image_set("shapes", n_images=64), "patches")
    >>> source.chunk(0).shape                       # 64 images x 64 patch tokens
    torch.Size([4096, 128])
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from jaxtyping import Float, Int
from torch import Tensor

from vit_patching.checks import check_choice, check_positive_int, check_seed
from vit_patching.runs.dataset import ImageSet, LoadedChunk, folder_images, zoo_images
from vit_patching.runs.sharding import digest
from vit_patching.sae.saes import POSITIONS
from vit_patching.zoo.datasets import TASKS

if TYPE_CHECKING:
    from vit_patching.model import HookedViT

__all__ = ["ModelActivations", "TensorActivations", "batches_images", "image_set", "select_positions",
           "tensor_images"]

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def tensor_images(images: Float[Tensor, "batch channel height width"],
                  labels: Int[Tensor, " batch"] | None = None) -> ImageSet:
    """An ``ImageSet`` over a tensor of normalised images (and optional labels), sliced per chunk.

    Example:
        >>> len(tensor_images(torch.randn(5, 3, 64, 64)))
        5
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError(f"data: expected normalised images [batch, channel, height, width], got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    if labels is not None and (not isinstance(labels, Tensor) or labels.shape != (images.shape[0],)):
        raise ValueError(f"labels: expected a tensor [{images.shape[0]}] (one label per image) or None, got "
                         f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")

    def load(model: "HookedViT", s: int, e: int) -> LoadedChunk:
        lab = None if labels is None else labels[s:e].long().cpu()
        return LoadedChunk(images[s:e].to(device=model.device, dtype=model.dtype), lab, "")

    return ImageSet(names=[f"image-{i:05d}" for i in range(images.shape[0])], load=load,
                    chunk_key=lambda s, e: digest(images[s:e]), source={"data": "tensor", "n": images.shape[0]})


def batches_images(batches: Sequence[Tensor]) -> ImageSet:
    """An ``ImageSet`` over a sequence of image batches ``[b_i, C, H, W]`` (normalised), read batch by batch: only
    the batches that overlap a chunk are touched, so the sequence may be a lazy one (``__len__`` and
    ``__getitem__``). A one-pass iterator cannot be re-read for a second epoch or a resumed run and is refused.

    Example:
        >>> len(batches_images([torch.randn(3, 3, 64, 64), torch.randn(2, 3, 64, 64)]))
        5
    """
    sizes = []
    for i, b in enumerate(batches):
        if not isinstance(b, Tensor) or b.ndim != 4:
            raise ValueError(f"data: expected image batches [batch, channel, height, width], got item {i}: "
                             f"{tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__}")
        sizes.append(b.shape[0])
    if not sizes or sum(sizes) == 0:
        raise ValueError("data: expected at least one image, got an empty sequence of batches")
    starts = [0]
    for n in sizes:
        starts.append(starts[-1] + n)

    def rows(s: int, e: int) -> Tensor:
        parts = [batches[i][max(s - starts[i], 0):min(e, starts[i + 1]) - starts[i]]
                 for i in range(len(sizes)) if starts[i] < e and starts[i + 1] > s]
        return torch.cat(parts)

    def load(model: "HookedViT", s: int, e: int) -> LoadedChunk:
        return LoadedChunk(rows(s, e).to(device=model.device, dtype=model.dtype), None, "")

    return ImageSet(names=[f"image-{i:05d}" for i in range(starts[-1])], load=load,
                    chunk_key=lambda s, e: digest(rows(s, e)), source={"data": "image batches", "n": starts[-1]})


def image_set(data: Any, n_images: int | None = None, data_seed: int = 0) -> ImageSet:
    """The images of ``data``: a zoo data set name (``"shapes"``, ...; needs ``n_images``), an image folder
    (``n_images``: its first files), a tensor of normalised images, a sequence of such tensors (image batches), or
    an ``ImageSet`` (returned as it is).

    Raises:
        ValueError / TypeError: naming ``data`` (or ``n_images`` / ``data_seed``), before any image is read.

    Example:
        >>> image_set("shapes", n_images=8).source["data"]
        "shipped dataset 'shapes'"
    """
    if n_images is not None:
        check_positive_int(n_images, "n_images")
    check_seed(data_seed, "data_seed")
    if isinstance(data, ImageSet):
        return data
    if isinstance(data, Tensor):
        return tensor_images(data if n_images is None else data[:n_images])
    if isinstance(data, str) and data in TASKS:
        if n_images is None:
            raise ValueError(f"n_images: expected a positive int (how many images of the zoo data set {data!r}), "
                             f"got None")
        return zoo_images(data, n_images, data_seed)
    if isinstance(data, (str, os.PathLike)):
        if not Path(data).is_dir():
            raise ValueError(f"data: expected a zoo data set {sorted(TASKS)} or an image folder, got {str(data)!r}")
        return folder_images(data, n_images)
    if isinstance(data, Sequence):
        images = batches_images(data)
        if n_images is not None and n_images < len(images):
            images.names = images.names[:n_images]
        return images
    raise TypeError(f"data: expected a zoo data set name, an image folder, a tensor of images, a sequence of image "
                    f"batches or an ImageSet, got {type(data).__name__} (a one-pass iterator cannot be read again "
                    f"for another epoch or a resumed run: pass a list)")


def select_positions(acts: Float[Tensor, "batch pos d_in"], positions: str, n_prefix: int) -> Float[Tensor, "batch n d_in"]:
    """The tokens an SAE reads, as the splice selects them: every token, the patch tokens or CLS.

    Example:
        >>> select_positions(torch.randn(2, 65, 8), "patches", n_prefix=1).shape
        torch.Size([2, 64, 8])
    """
    if positions == "all":
        return acts
    return acts[:, :1] if positions == "cls" else acts[:, n_prefix:]


def check_hook(model: "HookedViT", hook: Any, positions: str) -> str:
    """``hook`` is one of the model's own hook points (not a spliced SAE's), and ``positions`` one it allows."""
    if not isinstance(hook, str) or hook not in model.hook_dict or ".sae." in hook:
        raise ValueError(f"hook: expected a hook name of the model (e.g. 'blocks.1.hook_resid_pre'), got {hook!r}")
    check_choice(positions, POSITIONS, "positions")
    if positions == "cls" and not model.cfg.has_cls:
        raise ValueError("positions: expected 'all' or 'patches' for a model without a CLS token, got 'cls'")
    return hook


class ModelActivations:
    """The activations of ``model`` at ``hook`` over ``images``, one chunk of ``chunk_images`` images at a time.

    Args:
        model: The HookedViT.
        hook: The hook point read; its activations are ``[batch, pos, d]`` (residual stream, attention or MLP
            output; per-head hooks are refused).
        images: The image source.
        positions: ``"all"``, ``"patches"`` or ``"cls"`` (as the splice's option).
        chunk_images: Images per chunk (the memory bound: a chunk's activations are held, nothing more).
        forward_batch: Images per forward pass (at most ``chunk_images``).
    """

    def __init__(self, model: "HookedViT", hook: str, images: ImageSet, positions: str = "all",
                 chunk_images: int = 64, forward_batch: int = 32):
        self.model, self.images = model, images
        self.hook = check_hook(model, hook, positions)
        self.positions = positions
        self.chunk_images = check_positive_int(chunk_images, "chunk_images")
        self.forward_batch = min(check_positive_int(forward_batch, "forward_batch"), chunk_images)
        m = _BLOCK.match(hook)
        # Stop after the hook's block: later blocks cannot change the activation (a global hook runs everything).
        self.stop = None if m is None or int(m.group(1)) + 1 >= model.cfg.n_layers else int(m.group(1)) + 1
        self.n_chunks = -(-len(images) // self.chunk_images)

    def describe(self) -> dict[str, Any]:
        """What the chunks are (recorded in ``training.json``)."""
        return {"hook": self.hook, "positions": self.positions, "images": dict(self.images.source),
                "n_images": len(self.images), "chunk_images": self.chunk_images, "forward_batch": self.forward_batch}

    def _forward(self, s: int, e: int) -> tuple[Tensor, Tensor | None]:
        loaded = self.images.load(self.model, s, e)
        acts: list[Tensor] = []

        def grab(act: Tensor, hook: Any) -> None:
            acts.append(act.detach())

        with torch.no_grad():
            self.model.run_with_hooks(loaded.images, fwd_hooks=[(self.hook, grab)], stop_at_layer=self.stop)
        act = acts[0]
        if act.ndim != 3:  # per-head hooks (hook_z) would need a hook_z SAE: not trained here
            raise ValueError(f"hook: expected a hook with activations [batch, pos, d], got {self.hook!r} with shape "
                             f"{tuple(acts[0].shape)}")
        # contiguous: torch.distributed sends a tensor's memory as it lies
        return select_positions(act, self.positions, self.model.cfg.n_prefix).float().cpu().contiguous(), loaded.labels

    def chunk_with_labels(self, i: int, rank: int = 0, world_size: int = 1) -> tuple[Float[Tensor, "tokens d_in"], Tensor | None]:
        """Chunk ``i``'s tokens ``[tokens, d_in]`` (image-major) and its images' labels (``None`` if unlabelled).

        With ``world_size > 1`` rank ``r`` runs forward batches ``r, r + w, ...`` and every batch is broadcast
        from the rank that ran it, so all ranks return the same tensor.
        """
        s0, e0 = i * self.chunk_images, min((i + 1) * self.chunk_images, len(self.images))
        parts: list[Tensor] = []
        labels: list[Tensor | None] = []
        for j, s in enumerate(range(s0, e0, self.forward_batch)):
            e = min(s + self.forward_batch, e0)
            owner = j % world_size
            if world_size == 1 or owner == rank:
                act, lab = self._forward(s, e)
            if world_size > 1:
                shape = torch.tensor(act.shape if owner == rank else (0, 0, 0), dtype=torch.long)
                dist.broadcast(shape, owner)
                if owner != rank:
                    act = torch.empty(tuple(shape.tolist()), dtype=torch.float32)
                dist.broadcast(act, owner)
                has = torch.tensor([-1 if owner != rank or lab is None else 1], dtype=torch.long)
                dist.broadcast(has, owner)
                if has.item() == 1:
                    lab = lab if owner == rank else torch.empty(e - s, dtype=torch.long)
                    dist.broadcast(lab, owner)
                else:
                    lab = None
            parts.append(act.flatten(0, 1))
            labels.append(lab)
        lab_all = None if any(lab is None for lab in labels) else torch.cat(labels)  # type: ignore[arg-type]
        return torch.cat(parts), lab_all

    def chunk(self, i: int, rank: int = 0, world_size: int = 1) -> Float[Tensor, "tokens d_in"]:
        """Chunk ``i``'s tokens ``[tokens, d_in]`` (see :meth:`chunk_with_labels`)."""
        return self.chunk_with_labels(i, rank, world_size)[0]

    @property
    def d_in(self) -> int:
        """The activation width (one forward pass of the first image; also checks the hook's shape)."""
        return int(self._forward(0, 1)[0].shape[-1])


class TensorActivations:
    """Activations given as a tensor ``[tokens, d_in]`` (synthetic data, a precomputed cache), in chunks.

    Example:
        >>> TensorActivations(torch.randn(1000, 16), chunk_tokens=256).n_chunks
        4
    """

    def __init__(self, acts: Float[Tensor, "tokens d_in"], chunk_tokens: int = 4096):
        if not isinstance(acts, Tensor) or acts.ndim != 2 or acts.shape[0] == 0:
            raise ValueError(f"acts: expected a non-empty tensor [tokens, d_in], got "
                             f"{tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__}")
        self.acts = acts.detach().float().cpu()
        self.chunk_tokens = check_positive_int(chunk_tokens, "chunk_tokens")
        self.n_chunks = -(-self.acts.shape[0] // self.chunk_tokens)
        self.hook = None

    @property
    def d_in(self) -> int:
        return int(self.acts.shape[1])

    def describe(self) -> dict[str, Any]:
        return {"tensor": list(self.acts.shape), "digest": digest(self.acts), "chunk_tokens": self.chunk_tokens}

    def chunk(self, i: int, rank: int = 0, world_size: int = 1) -> Float[Tensor, "tokens d_in"]:
        return self.acts[i * self.chunk_tokens:(i + 1) * self.chunk_tokens]
