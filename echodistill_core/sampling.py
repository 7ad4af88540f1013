"""Samplers: the student in one step (or a few, Euler ancestral, no CFG), the teacher with DDIM + CFG.

Every sampler works on latents; `generate` goes from prompts and seeds to images. A seed fixes its
image whatever else is in the batch, because each image's noise comes from its own generator.
"""

from __future__ import annotations

from typing import Callable

import torch

from .config import PAPER_GUIDANCE, TEACHER_SAMPLE_STEPS
from .models import DiffusionModel, TextConditioner

Progress = Callable[[int, int], None]  # called after each network evaluation with (steps done, steps); may raise to stop


def initial_noise(model: DiffusionModel, seeds: list[int]) -> torch.Tensor:
    """[B, C, H, W] unit Gaussian noise, one CPU generator per seed, on the model's device."""
    shape = model.latent_shape()
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
    return torch.stack(noise).to(model.device)


def timesteps_for(model: DiffusionModel, steps: int) -> list[int]:
    """`steps` timesteps from the terminal one down, evenly spaced ("trailing" spacing)."""
    total = model.schedule.num_train_timesteps
    return [round(total - 1 - index * total / steps) for index in range(steps)]


@torch.no_grad()
def student_sample(student: DiffusionModel, cond: torch.Tensor, noise: torch.Tensor, steps: int = 1,
                   generator: torch.Generator | None = None, callback: Progress | None = None) -> torch.Tensor:
    """Clean latents from the one-step student (steps 2-4: Euler ancestral in sigma space, no CFG).

    Step one evaluates the student at its terminal timestep on pure noise, as in SD-Turbo.
    """
    timesteps = timesteps_for(student, steps)
    z = noise
    for index, timestep in enumerate(timesteps):
        t = torch.full((len(z),), timestep, device=z.device, dtype=torch.long)
        x0 = student.predict_x0(z, t, cond)
        if callback is not None:
            callback(index + 1, len(timesteps))
        if index + 1 == len(timesteps):
            return x0
        z = _euler_ancestral_step(student, z, x0, timestep, timesteps[index + 1], generator)
    return z


def _euler_ancestral_step(model: DiffusionModel, z: torch.Tensor, x0: torch.Tensor, timestep: int,
                          next_timestep: int, generator: torch.Generator | None) -> torch.Tensor:
    abar = model.schedule.alphas_cumprod
    sigma, sigma_next = (((1 - abar[i]) / abar[i]).sqrt().item() for i in (timestep, next_timestep))
    sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    x = z * (1 + sigma**2) ** 0.5  # variance-preserving -> variance-exploding coordinates
    x = x + (x - x0) / sigma * (sigma_down - sigma)
    fresh = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    x = x + fresh * sigma_up
    return x / (1 + sigma_next**2) ** 0.5


def guided_x0(model: DiffusionModel, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
              uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """The clean sample predicted with classifier-free guidance, in one batched evaluation."""
    if guidance_scale == 1.0:
        return model.predict_x0(z_t, t, cond)
    x0_uncond, x0_cond = model.predict_x0(
        torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([uncond.expand_as(cond), cond])
    ).chunk(2)
    return x0_uncond + guidance_scale * (x0_cond - x0_uncond)


@torch.no_grad()
def teacher_sample(teacher: DiffusionModel, cond: torch.Tensor, uncond: torch.Tensor, noise: torch.Tensor,
                   steps: int = TEACHER_SAMPLE_STEPS, guidance_scale: float = PAPER_GUIDANCE,
                   callback: Progress | None = None) -> torch.Tensor:
    """Clean latents by deterministic DDIM (eta = 0) with classifier-free guidance."""
    timesteps = timesteps_for(teacher, steps)
    z = noise
    for index, timestep in enumerate(timesteps):
        t = torch.full((len(z),), timestep, device=z.device, dtype=torch.long)
        x0 = guided_x0(teacher, z, t, cond, uncond, guidance_scale)
        if callback is not None:
            callback(index + 1, len(timesteps))
        if index + 1 == len(timesteps):
            return x0
        eps = teacher.schedule.to_eps_from_x0(x0, z, t)
        t_next = torch.full_like(t, timesteps[index + 1])
        z = teacher.schedule.add_noise(x0, eps, t_next)
    return z


def to_images(latents_or_images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> ComfyUI's [B, H, W, 3] float in [0, 1] on the CPU."""
    return ((latents_or_images.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu()


@torch.no_grad()
def generate_student(student: DiffusionModel, text: TextConditioner, prompts: list[str], seeds: list[int],
                     steps: int = 1, callback: Progress | None = None) -> torch.Tensor:
    """The one-step student: prompts and seeds to images ([B, H, W, 3] in [0, 1])."""
    _check_seeds(prompts, seeds)
    generator = torch.Generator().manual_seed(int(seeds[0]) + 1)
    latents = student_sample(student, text(prompts), initial_noise(student, seeds), steps, generator, callback)
    return to_images(student.decode(latents))


@torch.no_grad()
def generate_teacher(teacher: DiffusionModel, text: TextConditioner, prompts: list[str], seeds: list[int],
                     steps: int = TEACHER_SAMPLE_STEPS, guidance_scale: float = PAPER_GUIDANCE, negative_prompt: str = "",
                     callback: Progress | None = None) -> torch.Tensor:
    """The multi-step teacher, DDIM with CFG: prompts and seeds to images ([B, H, W, 3] in [0, 1])."""
    _check_seeds(prompts, seeds)
    cond, uncond = text(prompts), text([negative_prompt])
    latents = teacher_sample(teacher, cond, uncond, initial_noise(teacher, seeds), steps, guidance_scale, callback)
    return to_images(teacher.decode(latents))


def _check_seeds(prompts: list[str], seeds: list[int]) -> None:
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts and {len(seeds)} seeds; give one seed per prompt")
