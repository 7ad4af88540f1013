"""EchoDistill Load Teacher / Load Student: the bundled tiny models, the user's diffusers folders and single-file
checkpoints."""

from __future__ import annotations

import torch

from ..echodistill_core.checkpoints import LOAD_STEPS, load_single_file
from ..echodistill_core.demo import bundled_model
from ..echodistill_core.families import FAMILIES
from ..echodistill_core.loading import FOLDER_LOAD_STEPS, load_diffusers_folder
from . import comfy
from .sockets import CATEGORY, STUDENT, TEACHER, LoadedModel

BUNDLED = {"teacher": "tiny teacher (bundled)", "student": "tiny one-step student (bundled)"}
PRECISIONS = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_INPUT = (list(PRECISIONS), {"default": "auto", "tooltip": "Precision of the frozen weights. auto: bf16 on "
                   "a GPU (fp16 where it lacks bf16), fp32 on a CPU. What trains is always fp32."})
AUTO_FAMILY = "auto-detect"
FAMILY_CHOICES = [AUTO_FAMILY] + [family.label for family in FAMILIES.values() if family.trainable]


def model_choices(role: str) -> list[str]:
    return [BUNDLED[role]] + [f"diffusers/{name}" for name in comfy.model_names("diffusers")] + \
        [f"checkpoints/{name}" for name in comfy.model_names("checkpoints")]


def load(role: str, choice: str, family: str, precision: str, node_id: str | None = None) -> LoadedModel:
    """The chosen model, on ComfyUI's offload device and in its care (comfy.manage); a file's or folder's load
    moves a progress bar and stops between its parts on Cancel."""
    loaded = _load(role, choice, family, precision, node_id)
    comfy.manage(role, loaded.model, loaded.text)
    return loaded


def _load(role: str, choice: str, family: str, precision: str, node_id: str | None = None) -> LoadedModel:
    device = comfy.offload_device()
    dtype = model_dtypes(precision, comfy.torch_device())
    with torch.inference_mode(False):  # weights made here must be usable for training later
        if choice == BUNDLED[role]:
            model, text = bundled_model(role, device=str(device))
            return LoadedModel(model, text, choice, tiny=True)
        kind, _, name = choice.partition("/")
        path = comfy.model_path(kind, name)
        if path is None:
            raise ValueError(f"{choice} is not in ComfyUI's models/{kind} folder any more; refresh the page")
        bar = comfy.Progress(LOAD_STEPS if kind == "checkpoints" else FOLDER_LOAD_STEPS, node_id)

        def after_each_part(done, total):
            bar.update(done)
            comfy.throw_if_interrupted()

        if kind == "checkpoints":
            model, text, found = load_single_file(path, role=role, family=None if family == AUTO_FAMILY else family,
                                                  dtype=dtype, device=device, progress=after_each_part)
            return LoadedModel(model, text, choice, family=found.name)
        model, text = load_diffusers_folder(path, dtype=dtype, device=device, role=role, progress=after_each_part)
        return LoadedModel(model, text, choice)


def weights_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of a `precision` choice for frozen weights on `device`: the one chosen, or for auto ComfyUI's
    choice for a UNet (bf16 on GPUs that have it, what the memory presets count on; fp32 on a CPU)."""
    dtypes = model_dtypes(precision, device)
    return dtypes if isinstance(dtypes, torch.dtype) else dtypes["unet"]


def model_dtypes(precision: str, device: torch.device) -> torch.dtype | dict[str, torch.dtype]:
    """`weights_dtype` for a diffusion model and its text encoder: for auto, ComfyUI's choice per part."""
    return comfy.weight_dtypes(PRECISIONS[precision], device)


class _Loader:
    CATEGORY = CATEGORY
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (model_choices(cls.ROLE), {"tooltip": f"The {cls.ROLE}: the bundled tiny model (runs on a "
                      "CPU in minutes), a diffusers folder from models/diffusers, or a checkpoint file from "
                      "models/checkpoints. " + cls.EXAMPLE}),
            "family": (FAMILY_CHOICES, {"default": AUTO_FAMILY, "tooltip": "Which model family a checkpoint "
                       "file is. auto-detect reads it from the weights; SD 2.1-base, SD 2.1 (768, v) and SD-Turbo "
                       "look alike, so set it if the detected one is wrong. A student is taken as Turbo. "
                       "Ignored for the bundled models and diffusers folders."}),
            "precision": PRECISION_INPUT,
        }, "hidden": {"node_id": "UNIQUE_ID"}}

    @classmethod
    def VALIDATE_INPUTS(cls, model=None):
        """At queue time: a model that is there; one that is not is named with the folder it belongs in."""
        if model is None or model in model_choices(cls.ROLE):
            return True
        kind, _, name = model.partition("/")
        if kind not in ("checkpoints", "diffusers") or not name:
            return f"{model!r} is not a {cls.ROLE} this node knows; choose one from the list"
        where = comfy.model_folder(kind)
        return (f"{name} is not in ComfyUI's models/{kind} folder ({where}). Put the {cls.ROLE} there (the "
                "workflow's note says where to download it), refresh the page and queue again, or choose another")

    def load(self, model, family, precision, node_id=None):
        return (load(self.ROLE, model, family, precision, node_id),)


class TeacherRole:
    """What every node that gives a teacher shares: its socket and what it says of it."""
    ROLE = "teacher"
    EXAMPLE = "For SD-Turbo as the student: SD 2.1 or SD 2.1-base."
    RETURN_TYPES = (TEACHER,)
    RETURN_NAMES = ("teacher",)
    OUTPUT_TOOLTIPS = ("The multi-step teacher with its text encoder, which the student shares.",)


class StudentRole:
    """What every node that gives a student shares: its socket and what it says of it."""
    ROLE = "student"
    EXAMPLE = "A one-step model of the teacher's family: SD-Turbo for SD 2.1."
    RETURN_TYPES = (STUDENT,)
    RETURN_NAMES = ("student",)
    OUTPUT_TOOLTIPS = ("The one-step student, to be personalized.",)


class LoadTeacher(TeacherRole, _Loader):
    DESCRIPTION = "Load the multi-step teacher (e.g. SD 2.1) that learns your concept and teaches the student."


class LoadStudent(StudentRole, _Loader):
    DESCRIPTION = "Load the one-step student (e.g. SD-Turbo) that EchoDistill personalizes."
