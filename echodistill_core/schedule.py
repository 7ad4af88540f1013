"""The variance-preserving noise schedule and the three prediction types (epsilon, v, sample).

z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, with abar_t the cumulative alpha of the model's
scheduler. A network predicts eps, v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0, or x0 itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass
class NoiseSchedule:
    alphas_cumprod: torch.Tensor  # [num_train_timesteps], float32, on CPU
    prediction_type: str

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction type {self.prediction_type!r} is not supported; use one of {PREDICTION_TYPES}"
            )

    @classmethod
    def from_scheduler_config(cls, config: dict) -> "NoiseSchedule":
        """Any diffusers scheduler config (DDPM, DDIM, Euler...): betas, schedule and prediction type."""
        scheduler = DDPMScheduler.from_config(dict(config))
        return cls(scheduler.alphas_cumprod.float().clone(), scheduler.config.prediction_type)

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def terminal_timestep(self) -> int:
        return self.num_train_timesteps - 1

    def alphas_cumprod_on(self, device: torch.device | str) -> torch.Tensor:
        """alphas_cumprod on `device`, copied there once: a copy on every call would make the host wait
        for a GPU several times an iteration."""
        device = torch.device(device)
        if self.alphas_cumprod.device == device:
            return self.alphas_cumprod
        source, copy = self.__dict__.get("_on_device", (None, None))
        if source is not self.alphas_cumprod or copy.device != device:
            copy = self.alphas_cumprod.to(device)
            self.__dict__["_on_device"] = (self.alphas_cumprod, copy)
        return copy

    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """abar_t for a batch of timesteps, shaped to broadcast against `like` ([B, ...])."""
        abar = self.alphas_cumprod_on(like.device)[t.to(like.device).long()]
        return abar.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.abar(t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output at z_t."""
        if self.prediction_type == "epsilon":
            return eps
        if self.prediction_type == "sample":
            return x0
        abar = self.abar(t, x0)
        return abar.sqrt() * eps - (1 - abar).sqrt() * x0

    def to_x0(self, output: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean sample implied by a network output at z_t."""
        if self.prediction_type == "sample":
            return output
        abar = self.abar(t, z_t)
        if self.prediction_type == "epsilon":
            return (z_t - (1 - abar).sqrt() * output) / abar.sqrt()
        return abar.sqrt() * z_t - (1 - abar).sqrt() * output

    def to_eps_from_x0(self, x0: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise that takes x0 to z_t (DDIM's re-noising direction)."""
        abar = self.abar(t, z_t)
        return (z_t - abar.sqrt() * x0) / (1 - abar).sqrt()
