"""Discriminators: each a frozen backbone plus a small trainable head (method.md, step 5)."""

from __future__ import annotations

import torch
from torch import nn

from .backbones import ImageBackbone, TeacherUNetFeatures


class DiscriminatorHead(nn.Module):
    """Linear(feature_dim, 512) - ReLU - Linear(512, 2): logits for (fake, real)."""

    def __init__(self, feature_dim: int, hidden: int = 512):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class Discriminator(nn.Module):
    """D_k = head(backbone(x)). Only the head trains; `features` stays differentiable in its input so
    the student's adversarial loss reaches the student through the frozen backbone."""

    def __init__(self, backbone: TeacherUNetFeatures | ImageBackbone, name: str):
        super().__init__()
        self.backbone, self.name = backbone, name
        self.head = DiscriminatorHead(backbone.feature_dim)

    @property
    def space(self) -> str:
        """"latent": reads latents (x0); "image": reads decoded images."""
        return self.backbone.space

    def features(self, latents: torch.Tensor, images: torch.Tensor, c: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
        return self.backbone(latents if self.space == "latent" else images, c, generator)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.to(self.head.layers[0].weight.dtype))
