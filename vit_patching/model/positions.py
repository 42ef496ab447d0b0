"""Token positions of a ViT: ``pos <-> (row, col)``, token labels and grid reshapes.

Positions follow timm's order: CLS (if any), then DIST (distilled DeiT) or REG0..REG{R-1}, then the patches
row-major (``pos = n_prefix + row * grid_w + col``). The grid always comes from the model's patch size and the
input image, never from the input's last axis (which for images is the pixel width).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Shaped
from torch import Tensor


@dataclass(frozen=True)
class TokenLayout:
    """Where each token of a ViT sequence sits.

    Attributes:
        grid_size: ``(grid_h, grid_w)`` patch grid.
        prefix_labels: Labels of the prefix tokens in sequence order, e.g. ``("CLS", "REG0")``.

    Example:
        >>> layout = TokenLayout(grid_size=(2, 3), prefix_labels=("CLS",))
        >>> layout.pos(1, 2), layout.row_col(6), layout.label(6)
        (6, (1, 2), 'P(1,2)')
    """

    grid_size: tuple[int, int]
    prefix_labels: tuple[str, ...]

    @property
    def n_prefix(self) -> int:
        return len(self.prefix_labels)

    @property
    def n_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def n_pos(self) -> int:
        return self.n_prefix + self.n_patches

    def pos(self, row: int, col: int) -> int:
        """Sequence position of the patch at ``(row, col)``."""
        gh, gw = self.grid_size
        if not (0 <= row < gh and 0 <= col < gw):
            raise ValueError(f"(row, col) must lie in the {gh}x{gw} patch grid, got ({row}, {col})")
        return self.n_prefix + row * gw + col

    def row_col(self, pos: int) -> tuple[int, int]:
        """``(row, col)`` of a patch position; raises for prefix tokens."""
        if not (self.n_prefix <= pos < self.n_pos):
            raise ValueError(
                f"pos must be a patch position in [{self.n_prefix}, {self.n_pos}), got {pos}"
                + (f" ({self.prefix_labels[pos]} is a prefix token)" if 0 <= pos < self.n_prefix else "")
            )
        return divmod(pos - self.n_prefix, self.grid_size[1])

    def label(self, pos: int) -> str:
        """Label of a position: ``CLS``, ``DIST``, ``REG0``, or ``P(r,c)``."""
        if 0 <= pos < self.n_prefix:
            return self.prefix_labels[pos]
        r, c = self.row_col(pos)
        return f"P({r},{c})"

    def labels(self) -> list[str]:
        """Labels of every position in sequence order."""
        return [self.label(p) for p in range(self.n_pos)]

    def patch_positions(self) -> list[int]:
        """Sequence positions of all patches, row-major."""
        return list(range(self.n_prefix, self.n_pos))

    def to_grid(self, values: Shaped[Tensor, "*batch pos"]) -> Shaped[Tensor, "*batch grid_h grid_w"]:
        """Reshape the patch slice of a ``[..., pos]`` tensor to ``[..., grid_h, grid_w]`` (prefix dropped)."""
        if values.shape[-1] != self.n_pos:
            raise ValueError(f"values must have {self.n_pos} positions on the last axis, got shape {tuple(values.shape)}")
        return values[..., self.n_prefix :].reshape(*values.shape[:-1], *self.grid_size)

    def from_grid(
        self, grid: Shaped[Tensor, "*batch grid_h grid_w"], prefix_fill: float = 0.0
    ) -> Shaped[Tensor, "*batch pos"]:
        """Inverse of :meth:`to_grid`: flatten a grid and prepend ``prefix_fill`` for prefix tokens."""
        if tuple(grid.shape[-2:]) != self.grid_size:
            raise ValueError(f"grid must end in {self.grid_size}, got shape {tuple(grid.shape)}")
        flat = grid.reshape(*grid.shape[:-2], self.n_patches)
        prefix = torch.full((*grid.shape[:-2], self.n_prefix), prefix_fill, dtype=grid.dtype, device=grid.device)
        return torch.cat([prefix, flat], dim=-1)
