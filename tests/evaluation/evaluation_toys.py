"""Toy models with known answers for the evaluation tests (tiny, CPU, float64 where exactness matters)."""
import torch
from torch import nn


class ConstantModel(nn.Module):
    """Logits that ignore the image: ``[batch, n_classes]`` filled with ``values``."""

    def __init__(self, values):
        super().__init__()
        self.register_buffer("values", torch.as_tensor(values, dtype=torch.float64))

    def forward(self, x):
        return self.values.expand(x.shape[0], -1).clone()


class AdditiveModel(nn.Module):
    """One logit ``f(x) = b + sum_j w_j x_j`` (a linear layer on the flattened image)."""

    def __init__(self, channels, height, width, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(channels, height, width, generator=g, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn((), generator=g, dtype=torch.float64))

    def forward(self, x):
        return ((x * self.weight).sum(dim=(1, 2, 3)) + self.bias)[:, None]


class RegionModel(nn.Module):
    """Two logits: ``[mean of x over a fixed square (all channels), 0.5]``; class 0 while the region is bright."""

    def __init__(self, rows, cols):
        super().__init__()
        self.rows, self.cols = rows, cols

    def forward(self, x):
        m = x[:, :, self.rows, self.cols].mean(dim=(1, 2, 3))
        return torch.stack([m, torch.full_like(m, 0.5)], dim=1)
