"""The bundled tiny teacher and one-step student: they load offline and follow the world's prompts.

The full measurement (200 prompts) is `tools/evaluate_tiny.py`; here a fixed reduced sample, with the
targets set for them: the teacher's 25-step samples at least 90 % right for shape, colour, size and
background, the student's ONE-step samples at least 80 %.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from echodistill_core.config import TEACHER_SAMPLE_STEPS, TINY_TEACHER_GUIDANCE
from echodistill_core.lab import world
from echodistill_core.lab.demo import DEMO_CONCEPT, default_models
from echodistill_core.lab.judge import attribute_accuracy, comfy_to_world
from echodistill_core.lab.tiny import tiny_image_network
from echodistill_core.loading import load_diffusers_folder
from echodistill_core.sampling import generate_student, generate_teacher

pytestmark = pytest.mark.usefixtures("one_thread")

TEACHER_TARGET, STUDENT_TARGET = 0.90, 0.80
SHIPPED_MB = 30  # both bundled pairs (pixel, and latent with its VAE), the image network and the judge


def test_the_bundled_models_ship_small_and_load_offline():
    assert world.TEACHER_FOLDER.is_dir() and world.STUDENT_FOLDER.is_dir(), \
        "echodistill_core/assets/tiny/{teacher,student} are part of the pack"
    size = sum(path.stat().st_size for path in world.TINY_ASSETS.rglob("*") if path.is_file())
    assert size < SHIPPED_MB * 2**20, f"the tiny assets weigh {size / 2**20:.1f} MB"
    teacher, student, text = default_models()
    assert teacher.schedule.prediction_type == student.schedule.prediction_type == "v_prediction"
    assert teacher.image_size() == student.image_size() == world.IMAGE_SIZE
    _, student_text = load_diffusers_folder(world.STUDENT_FOLDER)
    for name, weight in text.text_encoder.state_dict().items():  # one shared text encoder
        assert torch.equal(weight, student_text.text_encoder.state_dict()[name]), name


def test_the_teacher_follows_prompts(judge):
    teacher, text = load_diffusers_folder(world.TEACHER_FOLDER)
    prompts, attributes = world.evaluation_set(48)
    images = generate_teacher(teacher, text, prompts, list(range(48)), TEACHER_SAMPLE_STEPS,
                              TINY_TEACHER_GUIDANCE)
    accuracy = attribute_accuracy(comfy_to_world(images), attributes, judge)
    assert min(accuracy.values()) >= TEACHER_TARGET, accuracy


def test_the_student_follows_prompts_in_one_step(judge):
    student, text = load_diffusers_folder(world.STUDENT_FOLDER)
    prompts, attributes = world.evaluation_set(200)
    images = generate_student(student, text, prompts, list(range(200)), steps=1)
    accuracy = attribute_accuracy(comfy_to_world(images), attributes, judge)
    assert min(accuracy.values()) >= STUDENT_TARGET, accuracy


def test_the_image_network_loads_as_dino_and_tells_looks_apart():
    """The pairs' stand-in for DINO reads its folder through the loader real DINO folders go through, and
    its features tell my circle from the circles nearest it (another look, the colours swapped, no look):
    noisy renders at new places and sizes are nearest the mean feature of their own concept's renders."""
    network = tiny_image_network()
    assert network.space == "image" and network.input_size == world.IMAGE_SIZE and "DINO" in network.name
    assert all(not p.requires_grad for p in network.parameters())
    plain = {key: value for key, value in DEMO_CONCEPT.items() if key not in ("look", "color2")}
    concepts = [DEMO_CONCEPT, dict(DEMO_CONCEPT, look="dot"), dict(DEMO_CONCEPT, look="halves"),
                dict(DEMO_CONCEPT, color="blue", color2="red"), plain]
    generator = torch.Generator().manual_seed(0)

    def renders(concept: dict, count: int = 12) -> torch.Tensor:
        views = []
        for _ in range(count):
            size = "big" if float(torch.rand(1, generator=generator)) < 0.5 else "small"
            margin = world.SIZES[size] + 1
            x, y = (margin + torch.rand(2, generator=generator) * (world.IMAGE_SIZE - 2 * margin)).tolist()
            views.append(world.render(dict(concept, size=size, x=x, y=y)))
        return torch.stack(views)

    with torch.no_grad():
        means = torch.stack([network(renders(concept)).mean(0) for concept in concepts])
        for index, concept in enumerate(concepts):
            views = renders(concept)
            noisy = (views + 0.05 * torch.randn(views.shape, generator=generator)).clamp(-1, 1)
            named = torch.cdist(network(noisy), means).argmin(dim=1)
            assert (named == index).float().mean() >= 0.9, (concept, named.tolist())
