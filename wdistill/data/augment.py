"""Batched tensor augmentation on the training device: random crop with padding, flip, normalise."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` then crop back to the input size at a random offset per image."""
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    off = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(x.device)
    rows = (off[0].view(n, 1, 1, 1) + torch.arange(h, device=x.device).view(1, 1, h, 1))
    padded = padded.gather(2, rows.expand(n, c, h, w + 2 * padding))
    cols = (off[1].view(n, 1, 1, 1) + torch.arange(w, device=x.device).view(1, 1, 1, w))
    return padded.gather(3, cols.expand(n, c, h, w))


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image horizontally with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator).to(x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


class Augment:
    """uint8 batch -> normalised float batch, with optional crop(padding) and flip."""

    def __init__(self, mean, std, crop_padding: int = 0, flip: bool = False):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.crop_padding = crop_padding
        self.flip = flip

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = images
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, generator)
        if self.flip:
            x = random_flip(x, generator)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return (x.float() - mean) / std
