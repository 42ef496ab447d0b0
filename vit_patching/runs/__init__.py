"""Dataset-scale runs: image sources, a sharded resumable CAAP runner and an offline HTML gallery.

Example:
    >>> from vit_patching.runs import zoo_images, run_caap_dataset
    >>> result = run_caap_dataset(model, zoo_images("shapes", n=8), "out/caap")   # doctest: +SKIP
"""
from __future__ import annotations

from .caap_run import CAAPRunConfig, PeerWaitError, merge_caap_chunks, run_caap_dataset, run_caap_shard
from .chunks import validate_chunk
from .dataset import ImageSet, LoadedChunk, folder_images, zoo_images
from .lock import RunLockError
from .gallery import write_gallery
from .sharding import chunk_ranges, digest, dist_rank_world, model_digest

__all__ = [
    "CAAPRunConfig", "ImageSet", "LoadedChunk", "PeerWaitError", "RunLockError", "chunk_ranges", "digest",
    "dist_rank_world", "folder_images", "merge_caap_chunks", "model_digest", "run_caap_dataset", "run_caap_shard",
    "validate_chunk", "write_gallery", "zoo_images",
]
