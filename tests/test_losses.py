"""Each loss against a value computed by hand."""

import math

import pytest
import torch

from echodistill_core import losses as L
from echodistill_core.tiny import tiny_model


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


def test_rgb_to_lab_matches_reference_colours():
    colours = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    images = (colours * 2 - 1).view(4, 3, 1, 1)
    lab = L.rgb_to_lab(images).view(4, 3) * torch.tensor([100.0, 128.0, 128.0])
    reference = torch.tensor([[53.24, 80.09, 67.20], [100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [32.30, 79.19, -107.86]])
    assert torch.allclose(lab, reference, atol=0.05)


def test_colour_loss_of_flat_images_is_the_mean_projected_patch_difference():
    """Flat images stay flat down the pyramid, so every level's distance is mean_k |theta_k . (p_a - p_b)|."""
    a = torch.tensor([0.8, -0.2, 0.1]).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    b = torch.tensor([-0.5, 0.4, 0.9]).view(1, 3, 1, 1).expand(1, 3, 8, 8)
    loss = L.color_loss(a, b, torch.Generator().manual_seed(7), levels=3, projections=16, patch=5)
    difference = (L.rgb_to_lab(a) - L.rgb_to_lab(b))[0, :, 0, 0]
    generator, expected = torch.Generator().manual_seed(7), []
    for size in (5, 3, 1):  # levels of 8, 4 and 2 px: patches capped at the level size, odd
        theta = torch.randn(3 * size * size, 16, generator=generator)
        theta = theta / theta.norm(dim=0, keepdim=True)
        patch_difference = difference.repeat_interleave(size * size)
        expected.append((patch_difference @ theta).abs().mean())
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-4)


def test_sampled_patches_are_the_unfolded_patches_at_those_positions():
    images = torch.rand(2, 3, 9, 7)
    positions = torch.tensor([0, 5, 31, 62])
    assert torch.equal(L.patches(images, 5, positions), L.patches(images, 5)[:, positions])


def test_colour_loss_is_zero_for_identical_images_and_positive_otherwise():
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    generator = torch.Generator().manual_seed(0)
    assert L.color_loss(images, images, generator).abs().max().item() < 1e-6
    assert (L.color_loss(images, images.flip(0), generator) > 0.01).all()


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
