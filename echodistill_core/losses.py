"""The losses of EchoDistill, in the order of one training iteration (shared/docs/method.md).

Notation: x0 clean latents, eps noise, t timesteps, c text embeddings, abar the cumulative alpha of a
model's schedule, x_s the student's one-step sample, x_T the teacher's guided prediction of the clean
latent from the re-noised x_s, img(.) decoding to images in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .models import DiffusionModel
from .sampling import guided_x0

REAL, FAKE = 1, 0  # discriminator classes


# Step 1: the teacher learns the concept (and, in the echo stage, from the student's best samples).

def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over the valid region [B]; `mask` [B, 1, H, W] spans the channels."""
    squared = (prediction.float() - target.float()) ** 2 * mask
    return squared.flatten(1).sum(1) / (mask.expand_as(squared).flatten(1).sum(1) + 1e-8)


def teacher_diffusion_loss(teacher: DiffusionModel, x0: torch.Tensor, c: torch.Tensor, eps: torch.Tensor,
                           t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_T per sample [B]: z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; masked MSE to the eps / v / x0
    target (each sample normalised by its own valid area, as in Custom Diffusion)."""
    z_t = teacher.schedule.add_noise(x0, eps, t)
    output = teacher.unet(z_t.to(teacher.dtype), t, c.to(teacher.dtype)).sample
    return masked_mse(output, teacher.schedule.target(x0, eps, t), mask)


# Step 3: the just-updated teacher refines the student's sample, in one guided evaluation.

@torch.no_grad()
def teacher_target(teacher: DiffusionModel, x_s: torch.Tensor, c: torch.Tensor, uncond: torch.Tensor,
                   eps: torch.Tensor, t: torch.Tensor, guidance_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x_T from z = sqrt(abar_t') sg(x_s) + sqrt(1 - abar_t') eps with CFG, and its weight w = abar_t'."""
    z = teacher.schedule.add_noise(x_s.detach(), eps, t)
    x_T = guided_x0(teacher, z, t, c, uncond, guidance_scale)
    w = teacher.schedule.alphas_cumprod.to(t.device)[t]
    return x_T, w


# Step 4: the student is pulled toward the teacher's refinement and toward the real images.

def latent_alignment_loss(x_s: torch.Tensor, x_T: torch.Tensor) -> torch.Tensor:
    """L_latent = 0.5 * mean((x_s - x_T)^2), one value per sample [B]."""
    return 0.5 * ((x_s.float() - x_T.float()) ** 2).flatten(1).mean(1)


def feature_alignment_loss(features_s: torch.Tensor, features_T: torch.Tensor) -> torch.Tensor:
    """L_feature = 1 - cosine(f(img(x_s)), f(img(x_T))), one value per sample [B]."""
    return 1 - F.cosine_similarity(features_s.float(), features_T.float(), dim=1)


def color_loss(images_s: torch.Tensor, images_T: torch.Tensor, generator: torch.Generator, *,
               levels: int = 5, projections: int = 128, patch: int = 11, max_patches: int = 256) -> torch.Tensor:
    """L_color: multi-scale sliced Wasserstein distance in CIELAB, one value per sample [B].

    Each of `levels` Gaussian-pyramid levels compares the distributions of `patch` x `patch` Lab patches
    of the two images along `projections` random unit directions: sort both projections, mean absolute
    difference. Levels are averaged. A level with more than `max_patches` positions is compared on that
    many random positions (0: all), which bounds time and memory at 512 px.
    """
    lab_s, lab_T = rgb_to_lab(images_s), rgb_to_lab(images_T)
    distances = []
    for level_s, level_T in zip(gaussian_pyramid(lab_s, levels), gaussian_pyramid(lab_T, levels)):
        height, width = level_s.shape[-2:]
        size = min(patch, height, width)
        size -= 1 - size % 2  # odd, so patches are centred
        directions = torch.randn(3 * size * size, projections, generator=generator).to(level_s)
        directions = directions / directions.norm(dim=0, keepdim=True)
        positions = None
        if 0 < max_patches < height * width:
            positions = torch.randperm(height * width, generator=generator)[:max_patches].to(level_s.device)
        distances.append(sliced_wasserstein(patches(level_s, size, positions), patches(level_T, size, positions),
                                            directions))
    return torch.stack(distances).mean(0)


def adversarial_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """L_adv,k = cross-entropy(D_k(img(x_s)), "real")."""
    return F.cross_entropy(logits_fake.float(), torch.full((len(logits_fake),), REAL, device=logits_fake.device))


def student_objective(adversarial: list[torch.Tensor], w: torch.Tensor, latent: torch.Tensor,
                      feature: torch.Tensor | None, color: torch.Tensor, *, adversarial_weight: float = 1.0,
                      latent_weight: float = 1.0, feature_weight: float = 1.0, color_weight: float = 0.1
                      ) -> torch.Tensor:
    """L_G = sum_k lambda_k L_adv,k + mean(w * (1.0 L_latent + 1.0 L_feature + 0.1 L_color)).

    The adversarial terms are not weighted by w; a missing feature network drops L_feature.
    """
    alignment = latent_weight * latent + color_weight * color
    if feature is not None:
        alignment = alignment + feature_weight * feature
    return adversarial_weight * sum(adversarial, torch.zeros(())) + (w * alignment).mean()


# Step 5: each discriminator head learns real concept images from the student's samples.

def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * [CE(D(real images), real) + CE(D(sg(img(x_s))), fake)]."""
    real = torch.full((len(logits_real),), REAL, device=logits_real.device)
    fake = torch.full((len(logits_fake),), FAKE, device=logits_fake.device)
    return 0.5 * (F.cross_entropy(logits_real.float(), real) + F.cross_entropy(logits_fake.float(), fake))


def r1_penalty(logits_real: torch.Tensor, inputs_real: torch.Tensor, gamma: float) -> torch.Tensor:
    """gamma / 2 * E ||d realness / d input||^2 on real inputs (optional; method.md suggests 1e-5)."""
    realness = (logits_real[:, REAL] - logits_real[:, FAKE]).sum()
    (gradient,) = torch.autograd.grad(realness, inputs_real, create_graph=True)
    return gamma / 2 * gradient.pow(2).flatten(1).sum(1).mean()


def realness(logits: torch.Tensor) -> torch.Tensor:
    """log p(real) per sample: how real a discriminator finds each input (ranks echo samples)."""
    return F.log_softmax(logits.float(), dim=1)[:, REAL]


# The colour loss's building blocks.

def rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (sRGB) -> CIELAB (D65), scaled to L/100, a/128, b/128."""
    rgb = ((images.float() + 1) / 2).clamp(0, 1)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).clamp(min=1e-8) ** 2.4, rgb / 12.92)
    to_xyz = torch.tensor([[0.412453, 0.357580, 0.180423],
                           [0.212671, 0.715160, 0.072169],
                           [0.019334, 0.119193, 0.950227]], device=images.device)
    xyz = torch.einsum("ij,bjhw->bihw", to_xyz, linear)
    xyz = xyz / torch.tensor([0.950456, 1.0, 1.088754], device=images.device).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-8) ** (1 / 3), 7.787 * xyz + 16 / 116)
    lightness = 116 * f[:, 1] - 16
    a, b = 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])
    return torch.stack([lightness / 100, a / 128, b / 128], dim=1)


def gaussian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """`levels` images: the input, then each blurred with a 5-tap binomial kernel and halved."""
    kernel_1d = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=images.device) / 16
    kernel = (kernel_1d[:, None] * kernel_1d[None, :]).expand(images.shape[1], 1, 5, 5)
    pyramid = [images]
    for _ in range(levels - 1):
        blurred = F.conv2d(F.pad(pyramid[-1], (2, 2, 2, 2), mode="replicate"), kernel, groups=images.shape[1])
        pyramid.append(blurred[..., ::2, ::2])
    return pyramid


def patches(images: torch.Tensor, size: int, positions: torch.Tensor | None = None) -> torch.Tensor:
    """`size` x `size` patches of [B, C, H, W] images (replicate-padded) centred on every pixel, or on
    the flat pixel indices `positions` [N], as [B, N, C*size*size] (channel-major, like unfold)."""
    padded = F.pad(images, (size // 2,) * 4, mode="replicate") if size > 1 else images
    if positions is None:
        return F.unfold(padded, size).transpose(1, 2)
    rows, cols = positions // images.shape[-1], positions % images.shape[-1]
    offsets = torch.arange(size, device=images.device)
    rows = (rows[:, None] + offsets[None, :])[:, :, None]  # [N, size, 1]
    cols = (cols[:, None] + offsets[None, :])[:, None, :]  # [N, 1, size]
    picked = padded[:, :, rows, cols]  # [B, C, N, size, size]
    return picked.permute(0, 2, 1, 3, 4).flatten(2)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Per-sample sliced 1-Wasserstein distance between point sets a, b [B, N, D] along directions [D, K]."""
    projected_a, _ = (a @ directions).sort(dim=1)
    projected_b, _ = (b @ directions).sort(dim=1)
    return (projected_a - projected_b).abs().mean(dim=(1, 2))
