"""The chunks of a CAAP dataset run: settings, fingerprints, computing a chunk, loading and checking a saved one.

A chunk's fingerprint is a digest of the model weights, the settings that decide the numbers, the chunk range and
the key of the inputs read for it (:meth:`ImageSet.load`). The rows per forward (``batch_size``) change the
last bits of a map (other matrix shapes, other rounding), so the batch size actually used is saved with each
chunk and a chunk is kept only when it equals the run's: a resumed ``batch_size="auto"`` run takes the batch
size of the chunks already saved, so it never mixes chunks computed with different settings.

An image whose outputs are not finite (``NonFiniteError`` from the experiment, or a non-finite map, logit or
score found here) is marked failed (``status`` 1, the reason in ``rows["error"]``); the chunk's other images
are computed and the run goes on.

Example:
    >>> run = ChunkRun(model, zoo_images("shapes", n=4), CAAPRunConfig(chunk_size=2), "out/caap")
    >>> run.chunks
    [(0, 2), (2, 4)]
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from vit_patching import __version__
from vit_patching.checks import (
    NonFiniteError, check_block_size, check_bool, check_choice, check_coalition_settings, check_finite,
    check_positive_int,
)
from vit_patching.images import to_pixels
from vit_patching.patching.caap import (
    DEFAULT_DIRECTION, DEFAULT_NEUTRAL, DEFAULT_READOUT, DEFAULT_WARN_SHARE, DIRECTIONS, NEUTRALS, READOUTS, SITES,
    caap, default_window,
)
from vit_patching.patching.caap_results import neutral_warnings
from vit_patching.patching.caap_shapley import caap_shapley
from vit_patching.patching import memory

from .chunks import ROW_FIELDS, chunk_path, read_chunk, read_chunk_header, validate_chunk
from .dataset import ImageSet
from .sharding import atomic_write_bytes, chunk_ranges, digest, model_digest

if TYPE_CHECKING:
    from vit_patching.model import HookedViT

logger = logging.getLogger(__name__)

__all__ = ["CAAPRunConfig", "ChunkRun", "THUMB_SIDE"]

#: Longest side of the thumbnails stored with each chunk (for the gallery; the maps keep full resolution).
THUMB_SIDE = 96


@dataclass
class CAAPRunConfig:
    """CAAP settings of a dataset run (see :func:`vit_patching.patching.caap.caap`) and its chunking.

    ``batch_size`` is rows per forward (an int or ``"auto"``); it is saved with every chunk and a chunk computed
    with another batch size is recomputed (see the module docstring).

    ``coalitions`` > 0 runs coalition CAAP (:func:`~vit_patching.patching.caap_shapley.caap_shapley`) with that
    many antithetic permutations (an even number >= 4), ``coalition_groups`` x ``coalition_groups`` blocks of
    patches as players (dividing the grid) and ``coalition_seed`` as the permutations' seed; 0 (default):
    single-patch CAAP. The three are part of the fingerprint only when ``coalitions`` > 0, so single-patch runs
    keep the fingerprints (and chunks) they had before coalitions existed.
    """

    window: tuple[int, int] | None = None
    neutral: str = DEFAULT_NEUTRAL
    site: str = "resid_pre"
    readout: str = DEFAULT_READOUT
    include_prefix: bool = False
    upsample: str = "nearest"
    direction: str = DEFAULT_DIRECTION
    chunk_size: int = 16
    batch_size: int | str = 64
    coalitions: int = 0
    coalition_groups: int = 1
    coalition_seed: int = 0

    def __post_init__(self) -> None:
        check_choice(self.neutral, [n for n in NEUTRALS if n != "mean_activations"], "neutral")
        check_choice(self.site, list(SITES), "site")
        check_choice(self.readout, READOUTS, "readout")
        check_bool(self.include_prefix, "include_prefix")
        check_choice(self.direction, DIRECTIONS, "direction")
        check_choice(self.upsample, ("nearest", "bilinear"), "upsample")
        check_positive_int(self.chunk_size, "chunk_size")
        if self.batch_size != "auto":
            check_positive_int(self.batch_size, "batch_size")
        check_coalition_settings(self.coalitions, self.coalition_groups, self.coalition_seed)

    @property
    def method(self) -> str:
        """What the run computes, in words: ``"CAAP"`` or ``"coalition CAAP (Shapley, N permutations, groups K)"``."""
        if not self.coalitions:
            return "CAAP"
        return f"coalition CAAP (Shapley, {self.coalitions} permutations, groups {self.coalition_groups})"

    def fingerprinted(self, n_layers: int) -> dict[str, Any]:
        """The settings that decide the numbers (window resolved), as stored in every chunk's fingerprint."""
        d = asdict(self)
        d.pop("batch_size")  # checked on its own against the chunk's saved batch size
        d.pop("chunk_size")  # the chunk range is part of the file name and of the image digest
        d["window"] = list(default_window(n_layers) if self.window is None else self.window)
        if d["direction"] == DEFAULT_DIRECTION:  # runs made before directions existed keep their fingerprints
            d.pop("direction")
        if not self.coalitions:  # likewise single-patch runs made before coalition CAAP existed
            for key in ("coalitions", "coalition_groups", "coalition_seed"):
                d.pop(key)
        return d


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Drop ``logger_name``'s records in the block: caap's warnings name chunk rows; the run logs global indices."""
    target = logging.getLogger(logger_name)

    def drop(record: logging.LogRecord) -> bool:
        return False

    target.addFilter(drop)
    try:
        yield
    finally:
        target.removeFilter(drop)


class ChunkRun:
    """One run's chunks: fingerprints, the batch size, loading (with the checks) and computing a chunk."""

    def __init__(self, model: "HookedViT", images: ImageSet, cfg: CAAPRunConfig, out_dir: str | os.PathLike):
        self.model, self.images, self.cfg, self.out_dir = model, images, cfg, Path(out_dir)
        if cfg.coalitions:  # before any chunk is computed: k x k blocks must tile the grid
            check_block_size(cfg.coalition_groups, tuple(model.cfg.grid_size), "coalition_groups")
        self.settings = cfg.fingerprinted(model.cfg.n_layers)
        self.base = {"model": model_digest(model), "settings": self.settings, "version": __version__}
        self.chunks = chunk_ranges(len(images), cfg.chunk_size)
        self._keys: dict[tuple[int, int], str | None] = {}
        self._batch_size: int | None = None if cfg.batch_size == "auto" else int(cfg.batch_size)

    @property
    def lock_digest(self) -> str:
        """Everything that decides the results (model, settings, images, batch size setting): the lock's identity."""
        return digest(self.base, self.images.source, len(self.images), self.cfg.chunk_size, str(self.cfg.batch_size))

    def expected_key(self, s: int, e: int) -> str | None:
        """The key of images ``[s, e)`` as they are now (cached for this run); ``None`` if they cannot be read."""
        if (s, e) not in self._keys:
            try:
                self._keys[(s, e)] = self.images.chunk_key(s, e)
            except OSError:
                self._keys[(s, e)] = None
        return self._keys[(s, e)]

    def fingerprint(self, s: int, e: int, key: str | None) -> str:
        return digest(self.base, s, e, key)

    def _header(self, s: int, e: int) -> dict[str, str] | None:
        return read_chunk_header(chunk_path(self.out_dir, s, e))

    def present(self, s: int, e: int) -> bool:
        """The chunk file exists and carries this run's fingerprint (cheap: the header only)."""
        meta = self._header(s, e)
        return meta is not None and meta.get("fingerprint") == self.fingerprint(s, e, self.expected_key(s, e))

    def batch_size(self) -> int:
        """The rows per forward of this run: the setting, or for ``"auto"`` that of the chunks already saved."""
        if self._batch_size is None:
            for s, e in self.chunks:
                meta = self._header(s, e)
                if meta is not None and meta.get("fingerprint") == self.fingerprint(s, e, self.expected_key(s, e)):
                    with contextlib.suppress(ValueError):
                        self._batch_size = int(meta.get("batch_size", ""))
                        if self._batch_size >= 1:
                            logger.info("batch_size='auto': %d rows per forward, as the chunks already saved",
                                        self._batch_size)
                            break
                        self._batch_size = None
            if self._batch_size is None:
                self._batch_size = memory.auto_batch_size(self.model)
        return self._batch_size

    def load(self, s: int, e: int) -> tuple[dict[str, Tensor], dict[str, str]] | None:
        """The chunk's tensors and metadata if its file exists, reads, carries the expected fingerprint and batch
        size and passes :func:`~vit_patching.runs.chunks.validate_chunk`; else ``None`` (recompute it)."""
        path = chunk_path(self.out_dir, s, e)
        read = read_chunk(path, self.fingerprint(s, e, self.expected_key(s, e)))
        if isinstance(read, str):
            if read == "stale fingerprint":
                logger.info("chunk [%d, %d): stale fingerprint, recomputing", s, e)
            elif read != "missing":
                logger.warning("chunk [%d, %d): %s, recomputing", s, e, read)
            return None
        tensors, meta = read
        cfg = self.model.cfg
        problem = validate_chunk(tensors, meta, e - s, cfg.n_classes, tuple(cfg.grid_size),
                                 coalition=bool(self.cfg.coalitions))
        if problem is None and meta["batch_size"] != str(self.batch_size()):
            logger.info("chunk [%d, %d): computed with batch_size %s, this run uses %d; recomputing",
                        s, e, meta["batch_size"], self.batch_size())
            return None
        if problem is not None:
            logger.warning("chunk [%d, %d) in %s does not validate (%s); recomputing", s, e, path, problem)
            return None
        return tensors, meta

    def _caap(self, x: Tensor) -> Any:
        cfg = self.cfg
        if cfg.coalitions:
            with torch.inference_mode(), _quiet("vit_patching.patching.caap_shapley"):
                return caap_shapley(
                    self.model, x, None, tuple(self.settings["window"]), n_permutations=cfg.coalitions,
                    groups=cfg.coalition_groups, seed=cfg.coalition_seed, neutral=cfg.neutral, site=cfg.site,
                    readout=cfg.readout, include_prefix=cfg.include_prefix, direction=cfg.direction,
                    upsample=cfg.upsample, batch_size=self.batch_size(),
                )
        with torch.inference_mode(), _quiet("vit_patching.patching.caap"):
            return caap(
                self.model, x, None, tuple(self.settings["window"]), neutral=cfg.neutral, site=cfg.site,
                readout=cfg.readout, include_prefix=cfg.include_prefix, direction=cfg.direction,
                upsample=cfg.upsample, batch_size=self.batch_size(),
            )

    def compute(self, s: int, e: int) -> None:
        """Compute chunk ``[s, e)`` and save it atomically; images with non-finite outputs are marked failed."""
        from safetensors.torch import save

        model, n = self.model, e - s
        x, labels, key = self.images.load(model, s, e)
        gh, gw = model.cfg.grid_size
        out = {
            "map": torch.full((n, gh, gw), float("nan")), "target": torch.full((n,), -1, dtype=torch.long),
            "source_logits": torch.full((n, model.cfg.n_classes), float("nan")),
            "source_score": torch.full((n,), float("nan")), "neutral_score": torch.full((n,), float("nan")),
            "status": torch.zeros(n, dtype=torch.uint8),
        }
        if self.cfg.coalitions:  # coalition CAAP: each patch's standard error and the game's two ends
            out.update({"standard_error": torch.full((n, gh, gw), float("nan")), "v_all": torch.full((n,), float("nan")),
                        "v_empty": torch.full((n,), float("nan"))})
        rows: dict[str, list[str]] = {k: [""] * n for k in ROW_FIELDS}

        def fail(bad: list[int], what: str) -> None:
            for r in bad:
                out["status"][r] = 1
                rows["error"][r] = f"{what}: NaN or infinity"
            logger.warning("images %s: %s not finite; marked failed", [s + r for r in bad], what)

        x_run = x.clone()
        t0 = time.perf_counter()
        while True:
            try:
                attr = self._caap(x_run)
            except NonFiniteError as err:  # the experiment refused these images
                bad = [r for r in err.indices if 0 <= r < n and int(out["status"][r]) == 0]
                if not bad:  # rows that are not this chunk's images, or already failed: nothing to learn
                    raise
                fail(bad, err.what)
                good = [r for r in range(n) if int(out["status"][r]) == 0]
                if not good:
                    break
                # Failed images are replaced by a copy of an explained one, not dropped: the batch keeps its
                # shape, so the other images' results keep their bits (other shapes round differently).
                x_run[[r for r in range(n) if int(out["status"][r]) == 1]] = x[good[0]]
                continue
            stored = [("CAAP map", attr.map), ("logits", attr.source_logits), ("source score", attr.source_score),
                      ("neutral score", attr.neutral_score)]
            if self.cfg.coalitions:
                stored += [("standard error", attr.standard_error), ("v(all)", attr.v_all), ("v(empty)", attr.v_empty)]
            for what, value in stored:
                try:
                    check_finite(value, what)
                except NonFiniteError as err:
                    bad = [r for r in err.indices if int(out["status"][r]) == 0]
                    if bad:
                        fail(bad, err.what)
            keep = [r for r in range(n) if int(out["status"][r]) == 0]
            idx = torch.tensor(keep, dtype=torch.long)
            out["map"][idx] = attr.map.float().cpu()[idx]
            out["target"][idx] = attr.target.long().cpu()[idx]
            out["source_logits"][idx] = attr.source_logits.float().cpu()[idx]
            out["source_score"][idx] = attr.source_score.float().cpu()[idx]
            out["neutral_score"][idx] = attr.neutral_score.float().cpu()[idx]
            if self.cfg.coalitions:
                for name in ("standard_error", "v_all", "v_empty"):  # not `key`: the chunk's image key
                    out[name][idx] = getattr(attr, name).float().cpu()[idx]
            for r in keep:
                rows["neutral"][r] = str(attr.neutral_choice[r])
                rows["warning"][r] = self._warning(attr, r, s + r)
            break
        seconds = time.perf_counter() - t0
        warned = [s + r for r in range(n) if rows["warning"][r]]
        if warned:
            logger.warning("images %s: the neutral context already gives the explained class much of its "
                           "probability (see the 'warning' column)", warned)
        pix = to_pixels(x, model.cfg.data_config)
        scale = THUMB_SIDE / max(pix.shape[-2:])
        if scale < 1:
            pix = torch.nn.functional.interpolate(pix, scale_factor=scale, mode="area")
        out["label"] = (torch.full((n,), -1) if labels is None else labels).long()
        out["thumb"] = (pix * 255).round().to(torch.uint8).cpu()
        meta = {"fingerprint": self.fingerprint(s, e, key), "seconds": f"{seconds:.6f}",
                "batch_size": str(self.batch_size()), "rows": json.dumps(rows)}
        tensors = {k: v.contiguous() for k, v in out.items()}
        atomic_write_bytes(chunk_path(self.out_dir, s, e), save(tensors, metadata=meta))

    def _warning(self, attr: Any, j: int, index: int) -> str:
        """Image ``j`` of ``attr``'s neutral-context warning, naming its global index ``index`` ('' if none)."""
        one = slice(j, j + 1)
        found = neutral_warnings(attr.neutral_logits[one], attr.source_logits[one], attr.target[one],
                                 str(attr.neutral_choice[j]), DEFAULT_WARN_SHARE, "", self.cfg.direction)
        return " ".join(w.replace("1/1 images [0]", f"image {index}") for w in found)
