"""Frozen feature extractors for the discriminators and the feature loss.

- `TeacherUNetFeatures` (the default, needs nothing but the teacher): the frozen *base* teacher UNet's
  down and mid blocks on lightly noised latents, pooled, as in latent adversarial diffusion
  distillation. Its adapters are disabled while it runs.
- `ImageBackbone`: any image network the user has locally (a transformers CLIP vision or DINO model,
  read from ComfyUI's files by `image_networks.py`), seen through its preprocessing, taking images in [-1, 1].
All are differentiable with respect to their input and have no trainable parameters.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import AdapterSet
from .models import DiffusionModel
from .parallel import Shard

TEACHER_FEATURES = "teacher"  # names the default backbone, TeacherUNetFeatures, where networks are chosen
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMALISATION = {  # transformers model type -> the mean and std of the pixels it was trained on
    "clip_vision_model": (CLIP_MEAN, CLIP_STD),
    "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
    "vit": (IMAGENET_MEAN, IMAGENET_STD),
}


class TeacherUNetFeatures(nn.Module):
    """Pooled down- and mid-block features of the frozen base teacher at a small noise level."""

    space = "latent"
    name = "the base teacher's features"

    def __init__(self, teacher: DiffusionModel, adapters: AdapterSet | None = None,
                 timesteps: tuple[int, int] = (0, 200)):
        super().__init__()
        # Held in lists so they are not submodules: their weights are not the discriminator's to save.
        self._teacher, self._adapters, self.timesteps = [teacher], [adapters], timesteps
        unet = teacher.unet
        self.feature_dim = sum(block.resnets[-1].out_channels for block in unet.down_blocks)
        self.feature_dim += unet.mid_block.resnets[-1].out_channels if unet.mid_block is not None else 0

    def forward(self, latents: torch.Tensor, c: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        teacher = self._teacher[0]
        unet, dtype = teacher.unet, teacher.dtype
        shard = Shard.current()  # drawn for the whole batch, this process's slice kept (parallel.py)
        count = len(latents) * shard.world
        t = shard.take(torch.randint(self.timesteps[0], self.timesteps[1] + 1, (count,), generator=generator))
        eps = shard.take(torch.randn((count, *latents.shape[1:]), generator=generator)).to(latents)
        t = t.to(latents.device)
        z_t = teacher.schedule.add_noise(latents, eps, t).to(dtype)
        adapters = self._adapters[0]
        # Checkpointed blocks recompute in the backward pass, when the adapters are enabled again: the
        # recomputation would read the adapted teacher. So this pass keeps its activations.
        with adapters.disabled() if adapters is not None else nullcontext(), _checkpointing_off(unet):
            embedding = unet.time_embedding(unet.time_proj(t).to(dtype))
            hidden = unet.conv_in(z_t)
            pooled = []
            for block in unet.down_blocks:
                if getattr(block, "has_cross_attention", False):
                    hidden, _ = block(hidden_states=hidden, temb=embedding, encoder_hidden_states=c.to(dtype))
                else:
                    hidden, _ = block(hidden_states=hidden, temb=embedding)
                pooled.append(hidden.mean(dim=(2, 3)))
            if unet.mid_block is not None:
                hidden = unet.mid_block(hidden, embedding, encoder_hidden_states=c.to(dtype))
                pooled.append(hidden.mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1).float()


_CHECKPOINTABLE: "weakref.WeakKeyDictionary[nn.Module, list[nn.Module]]" = weakref.WeakKeyDictionary()


@contextmanager
def _checkpointing_off(module: nn.Module) -> Iterator[None]:
    # The blocks that can checkpoint, found once per module: a walk over every module of a UNet at each
    # call cost more than some of the tiny models' blocks.
    if module not in _CHECKPOINTABLE:
        _CHECKPOINTABLE[module] = [m for m in module.modules() if hasattr(m, "gradient_checkpointing")]
    checkpointed = [m for m in _CHECKPOINTABLE[module] if m.gradient_checkpointing]
    for submodule in checkpointed:
        submodule.gradient_checkpointing = False
    try:
        yield
    finally:
        for submodule in checkpointed:
            submodule.gradient_checkpointing = True


class ImageBackbone(nn.Module):
    """A frozen image network: images in [-1, 1] [B, 3, H, W] -> features [B, feature_dim].

    `network` maps pixels resized to `input_size` and normalised with `mean` and `std` to a tensor or to an
    output with `image_embeds`, `pooler_output` or `last_hidden_state` (whose CLS token is taken). `name`
    says which network it is, for summaries. `interpolate_positions` asks a transformers ViT to resample
    its position embeddings for an input size other than its own.
    """

    space = "image"

    def __init__(self, network: nn.Module, feature_dim: int, input_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], name: str, interpolate_positions: bool = False):
        super().__init__()
        self.network = network.requires_grad_(False).eval()
        self.feature_dim, self.input_size, self.name = feature_dim, input_size, name
        self.interpolate_positions = interpolate_positions
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_transformers(cls, network: nn.Module, *, input_size: int | None = None, label: str | None = None,
                          source: str | None = None) -> "ImageBackbone":
        """A transformers vision model (CLIPVisionModel(WithProjection), Dinov2Model, ViTModel) with the
        normalisation it was trained with: CLIP's mean and std for CLIP, ImageNet's for DINO, DINOv2 and ViT.

        `input_size` defaults to the model's own image size. The name reads "<label> at <size> px (<source>)",
        the label defaulting to the model's class.
        """
        config = network.config
        if config.model_type not in NORMALISATION:
            raise ValueError(f"no known preprocessing for a {config.model_type!r} model; known: {', '.join(NORMALISATION)}")
        native_size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        size = input_size or native_size
        dim = config.projection_dim if hasattr(network, "visual_projection") else config.hidden_size
        name = f"{label or type(network).__name__} at {size} px" + (f" ({source})" if source else "")
        return cls(network, dim, size, *NORMALISATION[config.model_type], name=name,
                   interpolate_positions=size != native_size)

    def forward(self, images: torch.Tensor, c: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        pixels = (images.float() + 1) / 2
        pixels = F.interpolate(pixels, size=(self.input_size, self.input_size), mode="bilinear",
                               align_corners=False, antialias=True)
        pixels = ((pixels - self.mean) / self.std).to(next(self.network.parameters()).dtype)
        options = {"interpolate_pos_encoding": True} if self.interpolate_positions else {}
        output = self.network(pixel_values=pixels, **options)
        return _pooled(output).float()


def _pooled(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output if output.ndim == 2 else output.flatten(1)
    for name in ("image_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return output.last_hidden_state[:, 0]
