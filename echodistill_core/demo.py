"""The demo concept and the default models: what runs on a fresh machine with nothing downloaded.

The concept is a yellow "heart" glyph, a shape the tiny world's models have never seen, drawn by code
at different places and sizes. The models are the bundled tiny pair when present
(`assets/tiny/teacher`, `assets/tiny/student`), else a tiny random pair built from configs.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .loading import load_diffusers_folder
from .models import DiffusionModel, TextConditioner
from .tiny import tiny_pair

BUNDLED = Path(__file__).parent / "assets" / "tiny"
DEMO_CLASS_WORD = "toy"
DEMO_PROMPTS = (
    "a photo of a {}",
    "a photo of a {} on a green background",
    "a photo of a small {}",
    "a photo of a {} in the snow",
)


def default_models(device: str = "cpu") -> tuple[DiffusionModel, DiffusionModel, TextConditioner]:
    """(teacher, student, shared text encoder): bundled tiny models if shipped, else random tiny ones."""
    if (BUNDLED / "teacher").is_dir() and (BUNDLED / "student").is_dir():
        teacher, text = load_diffusers_folder(BUNDLED / "teacher", device=device)
        student, _ = load_diffusers_folder(BUNDLED / "student", device=device)
        return teacher, student, text
    teacher, student, text = tiny_pair("v_prediction", "sample", image_size=32)
    for module in (teacher.unet, student.unet, text.text_encoder):
        module.to(device)
    return teacher, student, text


def heart(size: int, center: tuple[float, float], radius: float,
          colour=(1.0, 0.85, 0.1), background=(0.2, 0.3, 0.8)) -> torch.Tensor:
    """A filled heart (the implicit curve (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0) on a flat background,
    [3, size, size] in 0..1."""
    coordinates = (torch.arange(size) + 0.5) / size
    y, x = torch.meshgrid(coordinates, coordinates, indexing="ij")
    x = (x - center[0]) / radius * 1.2
    y = -(y - center[1]) / radius * 1.2 + 0.2
    inside = (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0
    image = torch.tensor(background).view(3, 1, 1).expand(3, size, size).clone()
    return torch.where(inside, torch.tensor(colour).view(3, 1, 1), image)


def demo_concept_images(size: int = 32, count: int = 5) -> list[torch.Tensor]:
    """`count` views of the heart at different places and sizes."""
    images = []
    for index in range(count):
        angle = 2 * math.pi * index / count
        radius = 0.22 + 0.06 * (index % 3)
        center = (0.5 + 0.15 * math.cos(angle), 0.5 + 0.15 * math.sin(angle))
        images.append(heart(size, center, radius))
    return images


def bundled_model(role: str, device: str = "cpu") -> tuple[DiffusionModel, TextConditioner]:
    """The bundled tiny "teacher" or "student" (a random tiny one while none is shipped)."""
    if (BUNDLED / role).is_dir():
        return load_diffusers_folder(BUNDLED / role, device=device)
    teacher, student, text = default_models(device)
    return (teacher if role == "teacher" else student), text
