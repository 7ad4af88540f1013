"""The losses of EchoDistill, in the order of one training iteration (docs/method.md).

Notation: x0 clean latents, eps noise, t timesteps, c text embeddings, abar the cumulative alpha of a
model's schedule, x_s the student's one-step sample, x_T the teacher's guided prediction of the clean
latent from the re-noised x_s, img(.) decoding to images in [-1, 1].
"""

from __future__ import annotations

import numpy as np
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
    w = teacher.schedule.alphas_cumprod_on(t.device)[t]
    return x_T, w


# Step 4: the student is pulled toward the teacher's refinement and toward the real images.

def latent_alignment_loss(x_s: torch.Tensor, x_T: torch.Tensor) -> torch.Tensor:
    """L_latent = 0.5 * mean((x_s - x_T)^2), one value per sample [B]."""
    return 0.5 * ((x_s.float() - x_T.float()) ** 2).flatten(1).mean(1)


def feature_alignment_loss(features_s: torch.Tensor, features_T: torch.Tensor) -> torch.Tensor:
    """L_feature = 1 - cosine(f(img(x_s)), f(img(x_T))), one value per sample [B]. Features are [B, D], or
    [B, tokens, D] like IP-Adapter's four image tokens: then the cosine over D is averaged over tokens."""
    cosine = F.cosine_similarity(features_s.float(), features_T.float(), dim=-1)
    return 1 - cosine.view(len(cosine), -1).mean(1)


def color_loss(images_s: torch.Tensor, images_T: torch.Tensor, generator: torch.Generator, *,
               levels: int = 5, projections: int = 128, patch: int = 11) -> torch.Tensor:
    """L_color = MS-SWD(img(x_s), img(x_T)), the multiscale sliced Wasserstein distance of He et al.
    (ECCV 2024) as its official implementation defines it, one value per sample [B].

    A `levels`-level Gaussian pyramid is built in sRGB; each level is converted to CIELAB in raw units
    (L 0..100, a and b about -128..127); `projections` random unit directions, drawn anew for each level,
    project the `patch` x `patch` Lab patch around every pixel (reflect padding); each direction's
    values are sorted in both images and compared by mean absolute difference; levels are averaged.
    Decision for images smaller than the paper's: a level too small to reflect a patch's border (its
    side at most half the patch) uses the largest odd patch it can reflect.
    """
    pyramid_s = gaussian_pyramid((images_s.float() + 1) / 2, levels)
    pyramid_T = gaussian_pyramid((images_T.float() + 1) / 2, levels)
    distances = []
    for level_s, level_T in zip(pyramid_s, pyramid_T):
        size = min(patch, 2 * min(level_s.shape[-2:]) - 1)
        size -= 1 - size % 2  # odd, so that each patch is centred on its pixel
        directions = torch.randn(projections, 3 * size * size, generator=generator)
        directions = (directions / directions.norm(dim=1, keepdim=True)).view(projections, 3, size, size)
        directions = directions.to(level_s.device)
        distances.append(sliced_wasserstein(project_patches(rgb_to_lab(level_s), directions),
                                            project_patches(rgb_to_lab(level_T), directions)))
    return torch.stack(distances).mean(0)


COLOR_SPACES = ("image", "latent_preview")


def fit_latent_preview(latents: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The least-squares affine map from a VAE's latents [N, C, h, w] to the colours of the images
    [N, 3, H, W] they encode, averaged over each latent's pixels: [C + 1, 3] (the last row the offset).

    The cheaper colour loss (`color_space="latent_preview"`) compares latent_preview(x_s) with
    latent_preview(x_T), colour images at the latents' resolution, and so decodes nothing: the colour
    loss then costs no decoder pass. It is an approximation of the paper's loss (which reads the decoded
    images), fitted on the concept's own images, and an option, not the default: on the bundled latent
    pair it teaches the one-step student my circle a little less than the decoded loss (calibrated
    fidelity 0.27 against 0.31 over six seeds, README "The latent pair")."""
    small = F.interpolate(images.float(), size=latents.shape[-2:], mode="area")
    inputs = torch.cat([latents.float(), torch.ones_like(latents[:, :1], dtype=torch.float32)], dim=1)
    inputs = inputs.permute(0, 2, 3, 1).reshape(-1, inputs.shape[1])
    outputs = small.permute(0, 2, 3, 1).reshape(-1, 3)
    gram = inputs.T @ inputs + 1e-6 * torch.eye(inputs.shape[1], device=inputs.device)
    return torch.linalg.solve(gram, inputs.T @ outputs)


def latent_preview(latents: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
    """Colour images [B, 3, h, w] (about [-1, 1]) of latents [B, C, h, w] by `fit_latent_preview`'s map."""
    return torch.einsum("bchw,cd->bdhw", latents.float(), mapping[:-1]) + mapping[-1].view(1, 3, 1, 1)


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
    """sRGB images in [0, 1] [B, 3, H, W] -> CIELAB (D65 white) in raw units: L in 0..100, a and b about
    -128..127. Values outside [0, 1] are converted by the same formulas, not clipped."""
    linear = torch.where(images > 0.04045, ((images.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4, images / 12.92)
    to_xyz = torch.tensor([[0.412453, 0.357580, 0.180423],
                           [0.212671, 0.715160, 0.072169],
                           [0.019334, 0.119193, 0.950227]], device=images.device)
    white = torch.tensor([0.950456, 1.0, 1.088754], device=images.device).view(1, 3, 1, 1)
    xyz = torch.einsum("ij,bjhw->bihw", to_xyz, linear) / white
    delta = 6 / 29
    f = torch.where(xyz > delta**3, xyz.clamp(min=delta**3) ** (1 / 3), xyz / (3 * delta**2) + 4 / 29)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], dim=1)


def gaussian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """`levels` images: the input, then each blurred by the 5 x 5 binomial kernel (reflect padding) and
    halved by taking every second pixel."""
    kernel_1d = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=images.device) / 16
    kernel = (kernel_1d[:, None] * kernel_1d[None, :]).view(1, 1, 5, 5)
    pyramid = [images]
    for _ in range(levels - 1):
        padded = _pad(pyramid[-1], 2)
        # Each channel as an image of its own through one plain convolution (a grouped one takes a slow
        # path on CPUs), evaluated only at the pixels kept (stride 2): the same values, a quarter the work.
        halved = F.conv2d(padded.flatten(0, 1)[:, None], kernel, stride=2)
        pyramid.append(halved.view(*padded.shape[:2], *halved.shape[-2:]))
    return pyramid


def project_patches(images: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """The dot product of each direction [K, C, p, p] with the p x p patch centred on every pixel of
    `images` [B, C, H, W] (reflect padding), as [B, K, H * W]."""
    padded = _pad(images, directions.shape[-1] // 2)
    if _on_cpu(padded) and torch.is_grad_enabled() and padded.requires_grad and not directions.requires_grad:
        return _CpuPatchProjection.apply(padded, directions).flatten(2)
    return F.conv2d(padded, directions).flatten(2)


def sliced_wasserstein(projected_a: torch.Tensor, projected_b: torch.Tensor) -> torch.Tensor:
    """Per-sample sliced 1-Wasserstein distance between two sets of projections [B, K, N]: each
    direction's values sorted, mean absolute difference over directions and values [B]."""
    return (sorted_values(projected_a) - sorted_values(projected_b)).abs().mean(dim=(1, 2))


def sorted_values(values: torch.Tensor) -> torch.Tensor:
    """`values` sorted along the last dimension, differentiable: torch.sort's values. On a CPU NumPy sorts
    (torch's CPU sort is several times slower, and also builds indices that only a gradient needs): values
    alone where no gradient is wanted (the target's side), the order and a gather where one is."""
    if not _on_cpu(values) or values.dtype not in (torch.float32, torch.float64):
        return values.sort(dim=-1).values
    if torch.is_grad_enabled() and values.requires_grad:
        return _CpuSort.apply(values)
    return torch.from_numpy(np.sort(values.detach().numpy(), axis=-1))


def _on_cpu(tensor: torch.Tensor) -> bool:
    """A plain CPU tensor outside torch.compile's tracing: one NumPy can read."""
    return (tensor.device.type == "cpu" and type(tensor) in (torch.Tensor, torch.nn.Parameter)
            and not torch.compiler.is_compiling())


class _CpuSort(torch.autograd.Function):
    """Sorted values whose gradient goes back to where each value came from (torch.sort's backward)."""

    @staticmethod
    def forward(ctx, values):
        order = torch.from_numpy(np.argsort(values.detach().numpy(), axis=-1))
        ctx.save_for_backward(order)
        return values.gather(-1, order)

    @staticmethod
    def backward(ctx, grad):
        (order,) = ctx.saved_tensors
        return torch.zeros_like(grad).scatter_(-1, order, grad)


class _CpuPatchProjection(torch.autograd.Function):
    """conv2d(padded, directions) with a gradient for `padded` only, computed as the adjoint of patch
    extraction (F.fold of directions^T @ grad): the same gradient as the convolution's, several times faster
    than the CPU convolution's backward for few input channels and large kernels. Computed a sample and a
    channel at a time, so that its buffer stays a fraction of the projections' size."""

    @staticmethod
    def forward(ctx, padded, directions):
        ctx.save_for_backward(directions)
        ctx.size = padded.shape[-2:]
        return F.conv2d(padded, directions)

    @staticmethod
    def backward(ctx, grad):
        (directions,) = ctx.saved_tensors
        count, channels, patch, _ = directions.shape
        flat = grad.flatten(2)  # [B, K, N]
        grads = []
        for sample in flat:
            per_channel = [F.fold(directions[:, channel].reshape(count, -1).T @ sample, ctx.size, patch)
                           for channel in range(channels)]
            grads.append(torch.cat(per_channel))
        return torch.stack(grads), None


def _pad(images: torch.Tensor, width: int) -> torch.Tensor:
    """Reflect padding; replicate padding where an image is too small to reflect (tiny models' last levels)."""
    if width == 0:
        return images
    mode = "reflect" if min(images.shape[-2:]) > width else "replicate"
    return F.pad(images, (width,) * 4, mode=mode)
