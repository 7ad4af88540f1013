"""The demo concept and the default models: what runs on a fresh machine with nothing downloaded.

The concept is "my circle": a circle, a kind the tiny world's models know, with its own look, red with a
blue band across its middle (`world.LOOKS`); as SD learns "my dog", a dog of its own coat among the coats
it knows. It is drawn by the world's own renderer at different places and both sizes on black, and
captioned in the world's own words ("a <mine> circle on black"), as an artist captions photos. The models
are the bundled tiny pixel pair (`assets/tiny/teacher`, `assets/tiny/student`), part of the pack.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import world
from ..data import CAPTION_SEPARATOR
from ..loading import load_diffusers_folder
from ..models import DiffusionModel, TextConditioner
from .tiny import bundled_pair

DEMO_TOKEN = "<mine>"
DEMO_CLASS_WORD = "circle"
DEMO_CONCEPT = dict(shape="circle", color="red", look="band", color2="blue", background="black")
DEMO_PROMPTS = (  # new contexts in the world's own words: other backgrounds, the other size
    "a {} on teal",
    "a small {} on gray",
    "a big {} on brown",
    "a {} on black",
)


def default_models(device: str = "cpu") -> tuple[DiffusionModel, DiffusionModel, TextConditioner]:
    """(teacher, student, shared text encoder): the bundled tiny pixel pair."""
    return bundled_pair("pixel", device)


def demo_concept_images(size: int = world.IMAGE_SIZE, count: int = 5) -> list[torch.Tensor]:
    """`count` views of the demo concept on black, around the centre, small and big: [3, size, size] in 0..1."""
    return rendered_concept_images(DEMO_CONCEPT, size, count)


def rendered_concept_images(concept: dict, size: int = world.IMAGE_SIZE, count: int = 5) -> list[torch.Tensor]:
    """`count` views of a concept the world draws (shape, color, background), around the centre, big and
    small in turn, as the demo's concept: [3, size, size] in 0..1."""
    images = []
    for index in range(count):
        angle = 2 * math.pi * index / count
        attributes = dict(concept, size=view_size(index))
        reach = world.IMAGE_SIZE / 2 - world.SIZES[attributes["size"]] - 1.5
        x, y = (world.IMAGE_SIZE / 2 + reach * math.cos(angle), world.IMAGE_SIZE / 2 + reach * math.sin(angle))
        image = (world.render(dict(attributes, x=x, y=y)) + 1) / 2
        if size != world.IMAGE_SIZE:
            image = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True)[0].clamp(0, 1)
        images.append(image)
    return images


def demo_captions(count: int = 5) -> list[str]:
    """The captions of `demo_concept_images(count=count)`, one per view."""
    return rendered_concept_captions(DEMO_CONCEPT, f"{DEMO_TOKEN} {DEMO_CLASS_WORD}", count)


def rendered_concept_captions(concept: dict, subject: str, count: int = 5, alternatives: bool = False) -> list[str]:
    """A caption for each of `rendered_concept_images`'s views, in the world's own words: the subject ("<mine>
    circle") and the background every view shows, "a <mine> circle on black". With `alternatives`, each holds
    four true captions of its view (`data.CAPTION_SEPARATOR`), one drawn at each use: that one, with the view's
    size ("a big <mine> circle on black"), without the article, and after "a photo of"."""
    background = concept["background"]
    if not alternatives:
        return [f"a {subject} on {background}"] * count
    return [f" {CAPTION_SEPARATOR} ".join((f"a {subject} on {background}", f"a {size} {subject} on {background}",
                                           f"{subject} on {background}", f"a photo of a {subject} on {background}"))
            for size in (view_size(index) for index in range(count))]


def view_size(index: int) -> str:
    """The size of `rendered_concept_images`'s view `index`: big and small in turn."""
    return "big" if index % 2 == 0 else "small"


def bundled_model(role: str, device: str = "cpu") -> tuple[DiffusionModel, TextConditioner]:
    """The bundled tiny "teacher" or "student" of the pixel pair."""
    folder = world.TEACHER_FOLDER if role == "teacher" else world.STUDENT_FOLDER
    return load_diffusers_folder(folder, device=device, role=role)
