import os
import sys
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# In ComfyUI's environment (tests/test_nodes.py runs there), PyPI's torchvision is a CUDA build that fails to import
# beside the CPU torch, and transformers imports it: these two of its modules are stood in for, as
# tests/test_comfyui.py does for the server. Elsewhere nothing imports them.
for _name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
    sys.modules.setdefault(_name, types.ModuleType(_name))

import pytest
import torch
from PIL import Image

from echodistill_core.config import PRESETS
from echodistill_core.data import ConceptDataset
from echodistill_core.lab.judge import load_judge
from echodistill_core.lab.tiny import tiny_pair, tiny_scheduler, tiny_text
from echodistill_core.loading import save_diffusers_folder

SIZE = 16


@pytest.fixture
def pair():
    """A tiny random (teacher, student, text) triple in pixel space: v-prediction teacher, x0 student."""
    return tiny_pair("v_prediction", "sample", image_size=SIZE)


def concept_images(count: int = 4, colour=(0.9, 0.1, 0.1)) -> list[torch.Tensor]:
    """Flat-coloured [3, H, W] images in 0..1 with a darker square, at different sizes."""
    images = []
    for index in range(count):
        size = 20 + 4 * index
        image = torch.ones(3, size, size) * torch.tensor(colour).view(3, 1, 1)
        image[:, 4:10, 4 + index : 10 + index] *= 0.3
        images.append(image)
    return images


def save_png(tensor: torch.Tensor, path: Path) -> None:
    """A [3, H, W] image in 0..1 as a PNG file."""
    Image.fromarray((tensor.permute(1, 2, 0) * 255).byte().numpy()).save(path)


def save_user_models(folder: Path) -> None:
    """A user's diffusers folders, good and bad, in `folder`: `teacher` and its one-step `student`; `multi-step`,
    the student's weights with a multi-step scheduler (a student that is not one, or the student's own weights
    given as the teacher); `foreign-student`, a one-step student of another text encoder."""
    teacher, student, text = tiny_pair("v_prediction", "sample", image_size=SIZE)
    save_diffusers_folder(folder / "teacher", teacher, text, tiny_scheduler("v_prediction"))
    save_diffusers_folder(folder / "student", student, text, tiny_scheduler("sample", one_step=True))
    save_diffusers_folder(folder / "multi-step", student, text, tiny_scheduler("sample"))
    save_diffusers_folder(folder / "foreign-student", student, tiny_text(seed=7),
                          tiny_scheduler("sample", one_step=True))


def tiny_config(**changes):
    return PRESETS["tiny"].replace(**{"class_word": "dog", "preview_every": 0, **changes})


def make_concept(config, augment: bool = True) -> ConceptDataset:
    return ConceptDataset(concept_images(), config.token, config.class_word, SIZE, augment=augment)


@pytest.fixture(scope="module")
def one_thread():
    """Sampling-heavy modules run on one thread: as fast on two cores, and the same figures everywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def judge():
    return load_judge()


# The tests against a real ComfyUI skip themselves where it is missing (no COMFYUI_DIR, no Chromium, no node).
# Where ECHODISTILL_REAL_HOST=required (the default when CI=true), such a skip is a failure: it would hide a
# broken host.
# test_nodes runs in ComfyUI's own Python: a skip that says so ("not needed here") is no missing host.
REAL_HOST_MODULES = ("test_comfyui", "test_browser", "test_nodes", "test_workflows")
NOT_NEEDED_HERE = "not needed here: "
REAL_HOST_REQUIRED = os.environ.get("ECHODISTILL_REAL_HOST", "required" if os.environ.get("CI") == "true" else "") == "required"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    reason = report.longrepr[2] if report.skipped and isinstance(report.longrepr, tuple) else str(report.longrepr)
    if report.skipped and REAL_HOST_REQUIRED and item.module.__name__ in REAL_HOST_MODULES \
            and NOT_NEEDED_HERE not in reason:
        report.outcome = "failed"
        report.longrepr = f"skipped, but ECHODISTILL_REAL_HOST=required: {reason}"
