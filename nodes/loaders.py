"""Load Teacher / Load Student: the bundled tiny models first, then the user's diffusers folders."""

from __future__ import annotations

import json

import torch

from ..echodistill_core.demo import bundled_model
from ..echodistill_core.loading import load_diffusers_folder
from . import comfy
from .sockets import CATEGORY, STUDENT, TEACHER, LoadedModel

BUNDLED = {"teacher": "tiny teacher (bundled)", "student": "tiny one-step student (bundled)"}
PRECISIONS = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MEMORY = ["balanced", "low memory (gradient checkpointing)"]


def model_choices(role: str) -> list[str]:
    return [BUNDLED[role]] + [f"diffusers/{name}" for name in comfy.model_names("diffusers")] + \
        [f"checkpoints/{name}" for name in comfy.model_names("checkpoints")]


def load(role: str, choice: str, precision: str, memory: str) -> LoadedModel:
    device = comfy.torch_device()
    dtype = PRECISIONS[precision] or (torch.float16 if device.type == "cuda" else torch.float32)
    checkpointing = memory != MEMORY[0]
    with torch.inference_mode(False):  # weights made here must be usable for training later
        if choice == BUNDLED[role]:
            model, text = bundled_model(role, device=str(device))
            return LoadedModel(model, text, choice, tiny=True, gradient_checkpointing=checkpointing)
        kind, _, name = choice.partition("/")
        if kind == "checkpoints":
            raise ValueError(
                f"{name} is a single-file checkpoint; EchoDistill loads diffusers folders for now. Put the "
                "model as a diffusers folder in models/diffusers (SD 2.1 for the teacher, SD-Turbo for the "
                "student) or use the bundled tiny models"
            )
        path = comfy.model_path("diffusers", name)
        if path is None:
            raise ValueError(f"{choice} is not in ComfyUI's models/diffusers folder any more; refresh the page")
        model, text = load_diffusers_folder(path, dtype=dtype, device=device)
        if role == "student":
            _check_one_step(path, name)
        return LoadedModel(model, text, choice, gradient_checkpointing=checkpointing)


def _check_one_step(path, name: str) -> None:
    scheduler = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    if scheduler.get("timestep_spacing") != "trailing":
        raise ValueError(
            f"{name} is a multi-step model (its scheduler starts sampling below the last timestep), so it "
            "cannot draw in one step; choose a one-step model such as SD-Turbo as the student, and use "
            f"{name} as the teacher"
        )


class _Loader:
    ROLE = ""
    CATEGORY = CATEGORY
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (model_choices(cls.ROLE), {"tooltip": f"The {cls.ROLE}: the bundled tiny model (runs on a "
                                                "CPU in minutes), or a diffusers folder from models/diffusers."}),
            "precision": (list(PRECISIONS), {"default": "auto", "tooltip": "Precision of the frozen weights. "
                          "auto: fp16 on a GPU, fp32 on a CPU. What trains is always fp32."}),
            "memory": (MEMORY, {"default": MEMORY[0], "tooltip": "low memory recomputes activations in the "
                       "backward pass (gradient checkpointing): slower, much less memory."}),
        }}

    def load(self, model, precision, memory):
        return (load(self.ROLE, model, precision, memory),)


class LoadTeacher(_Loader):
    ROLE = "teacher"
    RETURN_TYPES = (TEACHER,)
    RETURN_NAMES = ("teacher",)
    OUTPUT_TOOLTIPS = ("The multi-step teacher with its text encoder, which the student shares.",)
    DESCRIPTION = "Load the multi-step teacher (e.g. SD 2.1) that learns your concept and teaches the student."


class LoadStudent(_Loader):
    ROLE = "student"
    RETURN_TYPES = (STUDENT,)
    RETURN_NAMES = ("student",)
    OUTPUT_TOOLTIPS = ("The one-step student, to be personalized.",)
    DESCRIPTION = "Load the one-step student (e.g. SD-Turbo) that EchoDistill personalizes."
