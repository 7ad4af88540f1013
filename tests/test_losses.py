"""Each loss against a value computed by hand."""

import math

import numpy as np

import pytest
import torch

from echodistill_core import losses as L
from echodistill_core.lab.tiny import tiny_model


def test_masked_mse_counts_only_the_valid_region_of_each_sample():
    prediction = torch.zeros(2, 2, 2, 2)
    target = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]], [[1.0, 1.0], [1.0, 1.0]]]] * 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [0.0, 0.0]]]])
    # sample 0: the top-left pixel of both channels, (1 + 1) / 2; sample 1: the top row, (1 + 9 + 1 + 1) / 4
    assert L.masked_mse(prediction, target, mask).tolist() == pytest.approx([1.0, 3.0])


def test_teacher_diffusion_loss_is_mse_to_the_v_target():
    teacher = tiny_model("v_prediction", image_size=8)
    x0, eps = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    t, c = torch.tensor([10, 900]), torch.randn(2, 16, 32)
    abar = teacher.schedule.alphas_cumprod[t].view(2, 1, 1, 1)
    z_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    expected = ((teacher.unet(z_t, t, c).sample - v) ** 2).flatten(1).mean(1)
    loss = L.teacher_diffusion_loss(teacher, x0, c, eps, t, torch.ones(2, 1, 8, 8))
    assert loss.tolist() == pytest.approx(expected.tolist(), rel=1e-5)


def test_latent_alignment_is_half_the_mean_squared_difference():
    x_s = torch.zeros(2, 1, 1, 2)
    x_T = torch.tensor([[[[1.0, 3.0]]], [[[0.0, 2.0]]]])
    assert L.latent_alignment_loss(x_s, x_T).tolist() == pytest.approx([0.5 * 5.0, 0.5 * 2.0])


def test_feature_alignment_is_one_minus_cosine():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 2.0], [3.0, 3.0]])
    assert L.feature_alignment_loss(a, b).tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_feature_alignment_averages_the_cosine_over_image_tokens():
    a = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])
    b = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [2.0, 0.0]]])  # cosines 1, 0, 0, 1
    assert L.feature_alignment_loss(a, b).tolist() == pytest.approx([0.5])


def test_adversarial_losses_are_cross_entropies():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p(real) = 3/4
    assert L.adversarial_generator_loss(logits).item() == pytest.approx(-math.log(0.75))
    # 0.5 * [-log p_real(real input) - log p_fake(fake input)]
    expected = 0.5 * (-math.log(0.75) - math.log(0.25))
    assert L.discriminator_loss(logits, logits).item() == pytest.approx(expected)
    assert L.realness(logits).item() == pytest.approx(math.log(0.75))


def test_student_objective_weights_alignment_by_w_but_not_the_adversarial_terms():
    adversarial = [torch.tensor(2.0), torch.tensor(3.0)]
    w, latent, feature, color = (torch.tensor([0.5, 1.0]), torch.tensor([1.0, 2.0]),
                                 torch.tensor([0.2, 0.4]), torch.tensor([10.0, 20.0]))
    total = L.student_objective(adversarial, w, latent, feature, color)
    per_sample = [0.5 * (1.0 + 0.2 + 1.0), 1.0 * (2.0 + 0.4 + 2.0)]
    assert total.item() == pytest.approx(5.0 + sum(per_sample) / 2)
    without_features = L.student_objective(adversarial, w, latent, None, color)
    assert without_features.item() == pytest.approx(5.0 + (0.5 * 2.0 + 1.0 * 4.0) / 2)


def test_rgb_to_lab_gives_raw_cielab_units():
    colours = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    lab = L.rgb_to_lab(colours.view(4, 3, 1, 1)).view(4, 3)
    reference = torch.tensor([[53.24, 80.09, 67.20], [100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [32.30, 79.19, -107.86]])
    assert torch.allclose(lab, reference, atol=0.05)


def reference_ms_swd(x: np.ndarray, y: np.ndarray, directions: list[np.ndarray]) -> float:
    """MS-SWD of two sRGB images [3, H, W] in 0..1, written out loop by loop from its definition: a
    binomial Gaussian pyramid in RGB (reflect padding, every second pixel), raw CIELAB per level, the
    patch around every pixel (reflect padding) projected on each level's unit directions [K, 3, p, p],
    sorted, mean absolute difference, mean over levels."""
    kernel = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256

    def blur_and_halve(image):
        padded = np.pad(image, ((0, 0), (2, 2), (2, 2)), mode="reflect")
        height, width = image.shape[1:]
        out = np.zeros_like(image)
        for i in range(height):
            for j in range(width):
                out[:, i, j] = (padded[:, i:i + 5, j:j + 5] * kernel).sum(axis=(1, 2))
        return out[:, ::2, ::2]

    def lab(image):
        linear = np.where(image > 0.04045, ((np.maximum(image, 0.04045) + 0.055) / 1.055) ** 2.4, image / 12.92)
        xyz = np.einsum("ij,jhw->ihw", [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                                        [0.0193, 0.1192, 0.9505]], linear)
        xyz = xyz / np.array([0.95047, 1.0, 1.08883])[:, None, None]
        f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
        return np.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])

    def projections(image, theta):
        p = theta.shape[-1]
        padded = np.pad(image, ((0, 0), (p // 2, p // 2), (p // 2, p // 2)), mode="reflect")
        height, width = image.shape[1:]
        values = [[(padded[:, i:i + p, j:j + p] * direction).sum() for i in range(height) for j in range(width)]
                  for direction in theta]
        return np.sort(np.array(values), axis=1)

    distances = []
    for theta in directions:
        distances.append(np.abs(projections(lab(x), theta) - projections(lab(y), theta)).mean())
        x, y = blur_and_halve(x), blur_and_halve(y)
    return float(np.mean(distances))


def test_colour_loss_is_ms_swd_by_its_definition():
    """Also beyond [-1, 1], where a decoder overshoots: those colours are converted, not clipped."""
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 12, 12, generator=generator) * 3 - 1.5
    targets = images.flip(2) * 0.7 + 0.1
    loss = L.color_loss(images, targets, torch.Generator().manual_seed(11), levels=3, projections=8, patch=5)
    # The same directions, drawn as the loss draws them: per level, [K, 3 * p * p] normals made unit.
    draws, directions = torch.Generator().manual_seed(11), []
    for size in (5, 5, 5):  # levels of 12, 6 and 3 px
        theta = torch.randn(8, 3 * size * size, generator=draws)
        directions.append((theta / theta.norm(dim=1, keepdim=True)).view(8, 3, size, size).double().numpy())
    for index in range(2):
        expected = reference_ms_swd(((images[index] + 1) / 2).double().numpy(),
                                    ((targets[index] + 1) / 2).double().numpy(), directions)
        assert loss[index].item() == pytest.approx(expected, rel=2e-3)


def test_colour_loss_of_two_greys_is_their_lightness_gap_in_raw_units():
    """Flat greys have a = b = 0 and stay flat down the pyramid: every patch differs by the lightness gap
    dL on its L entries, so each level's distance is mean_k |dL * sum of theta_k's L entries|."""
    grey = lambda value: torch.full((1, 3, 32, 32), value * 2 - 1)
    loss = L.color_loss(grey(0.5), grey(0.6), torch.Generator().manual_seed(5))
    lightness = lambda v: 116 * (((v + 0.055) / 1.055) ** 2.4) ** (1 / 3) - 16
    gap = lightness(0.6) - lightness(0.5)  # about 9.3 L units
    draws, expected = torch.Generator().manual_seed(5), []
    for size in (11, 11, 11, 7, 3):  # levels of 32, 16, 8, 4 and 2 px: patches with a border they can reflect
        theta = torch.randn(128, 3 * size * size, generator=draws)
        theta = (theta / theta.norm(dim=1, keepdim=True)).view(128, 3, size * size)
        expected.append((gap * theta[:, 0].sum(1)).abs().mean())
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-3)
    assert 2 < loss.item() < 8  # raw Lab: at weight 0.1 this is of the order of the other terms


def test_r1_penalty_matches_the_gradient_norm_of_a_linear_head():
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # realness = logit_real - logit_fake = 2 x1 - x0
    inputs = torch.randn(3, 2, requires_grad=True)
    penalty = L.r1_penalty(inputs @ weight.T, inputs, gamma=2.0)
    assert penalty.item() == pytest.approx(2.0 / 2 * (1.0 + 4.0))


def test_renoising_weight_is_abar():
    teacher = tiny_model("v_prediction", image_size=8)
    t = torch.tensor([0, 500, 999])
    _, w = L.teacher_target(teacher, torch.zeros(3, 3, 8, 8), torch.zeros(3, 16, 32), torch.zeros(1, 16, 32),
                            torch.zeros(3, 3, 8, 8), t, guidance_scale=7.5)
    assert torch.equal(w, teacher.schedule.alphas_cumprod[t])
