"""EchoDistill Load Teacher / Load Student: the bundled tiny models, the user's diffusers folders and single-file
checkpoints."""

from __future__ import annotations

import torch

from ..echodistill_core.checkpoints import LOAD_STEPS, load_single_file
from ..echodistill_core.lab.demo import bundled_model
from ..echodistill_core.families import FAMILIES
from ..echodistill_core.loading import FOLDER_LOAD_STEPS, load_diffusers_folder
from ..echodistill_core.recipe import DEFAULT_PRECISION, PRECISION_HELP, PRECISIONS, frozen_dtype
from . import comfyui_host as host
from .comfyui_host import io
from .sockets import CATEGORY, STUDENT, TEACHER, LoadedModel

BUNDLED = {"teacher": "tiny teacher (bundled)", "student": "tiny one-step student (bundled)"}
PRECISION_TOOLTIP = PRECISION_HELP[0].upper() + PRECISION_HELP[1:] + "."  # the run recipe's rule (recipe.frozen_dtype)


def precision_input() -> io.Combo.Input:
    return io.Combo.Input("precision", options=list(PRECISIONS), default=DEFAULT_PRECISION, tooltip=PRECISION_TOOLTIP)


AUTO_FAMILY = "auto-detect"
FAMILY_CHOICES = [AUTO_FAMILY] + [family.label for family in FAMILIES.values() if family.trainable]


def model_choices(role: str) -> list[str]:
    return [BUNDLED[role]] + [f"diffusers/{name}" for name in host.model_names("diffusers")] + \
        [f"checkpoints/{name}" for name in host.model_names("checkpoints")]


def load(role: str, choice: str, family: str, precision: str, node_id: str | None = None) -> LoadedModel:
    """The chosen model, on ComfyUI's offload device and in its care (host.manage); a file's or folder's load
    moves a progress bar and stops between its parts on Cancel."""
    loaded = _load(role, choice, family, precision, node_id)
    host.manage(role, loaded.model, loaded.text)
    return loaded


def _load(role: str, choice: str, family: str, precision: str, node_id: str | None = None) -> LoadedModel:
    device = host.offload_device()
    dtype = model_dtypes(precision, host.torch_device())
    with torch.inference_mode(False):  # weights made here must be usable for training later
        if choice == BUNDLED[role]:
            model, text = bundled_model(role, device=str(device))
            return LoadedModel(model, text, choice, tiny=True)
        kind, _, name = choice.partition("/")
        path = host.model_path(kind, name)
        if path is None:
            raise ValueError(f"{choice} is not in ComfyUI's models/{kind} folder any more; refresh the page")
        bar = host.Progress(LOAD_STEPS if kind == "checkpoints" else FOLDER_LOAD_STEPS, node_id)

        def after_each_part(done, total):
            bar.update(done)
            host.throw_if_interrupted()

        if kind == "checkpoints":
            model, text, found = load_single_file(path, role=role, family=None if family == AUTO_FAMILY else family,
                                                  dtype=dtype, device=device, progress=after_each_part)
            return LoadedModel(model, text, choice, family=found.name)
        model, text = load_diffusers_folder(path, dtype=dtype, device=device, role=role, progress=after_each_part)
        return LoadedModel(model, text, choice)


def weights_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of a `precision` choice for frozen weights on `device` (for auto, ComfyUI's choice for a UNet),
    by the run recipe's rule."""
    dtypes = model_dtypes(precision, device)
    return dtypes if isinstance(dtypes, torch.dtype) else dtypes["unet"]


def model_dtypes(precision: str, device: torch.device) -> torch.dtype | dict[str, torch.dtype]:
    """`weights_dtype` for a diffusion model and its text encoder: the run recipe's rule (recipe.frozen_dtype),
    given ComfyUI's own choice per part for auto on an accelerator."""
    return frozen_dtype(precision, device, host_choice=host.part_dtypes(device))


def file_fingerprint(path) -> tuple | None:
    """What tells a file (or a folder's files) apart from the one read last time: each file's size and
    modification time. A model replaced under the same name is loaded again, and so is all it feeds."""
    if path is None or not path.exists():
        return None
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return tuple((str(p.relative_to(path)) if path.is_dir() else p.name, p.stat().st_size, p.stat().st_mtime_ns)
                 for p in files)


class _Loader(io.ComfyNode):
    ABOUT = ""  # the node's description

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=f"EchoDistillLoad{cls.ROLE.capitalize()}", display_name=f"EchoDistill Load {cls.ROLE.capitalize()}",
            category=CATEGORY, description=cls.ABOUT, hidden=[io.Hidden.unique_id], inputs=[
                io.Combo.Input("model", options=model_choices(cls.ROLE), tooltip=f"The {cls.ROLE}: the bundled tiny "
                               "model (runs on a CPU in minutes), a diffusers folder from models/diffusers, or a "
                               "checkpoint file from models/checkpoints. " + cls.EXAMPLE),
                io.Combo.Input("family", options=FAMILY_CHOICES, default=AUTO_FAMILY, tooltip="Which model family "
                               "a checkpoint file is. auto-detect reads it from the weights; SD 2.1-base, SD 2.1 "
                               "(768, v) and SD-Turbo look alike, so set it if the detected one is wrong. A student "
                               "is taken as Turbo. Ignored for the bundled models and diffusers folders."),
                precision_input(),
            ], outputs=[cls.output()])

    @classmethod
    def validate_inputs(cls, model=None):
        """At queue time: a model that is there; one that is not is named with the folder it belongs in."""
        if model is None or model in model_choices(cls.ROLE):
            return True
        kind, _, name = model.partition("/")
        if kind not in ("checkpoints", "diffusers") or not name:
            return f"{model!r} is not a {cls.ROLE} this node knows; choose one from the list"
        where = host.model_folder(kind)
        return (f"{name} is not in ComfyUI's models/{kind} folder ({where}). Put the {cls.ROLE} there (the "
                "workflow's note says where to download it), refresh the page and queue again, or choose another")

    @classmethod
    def fingerprint_inputs(cls, model=None, **_):
        """The chosen file as it is on disk: a model replaced under its name loads again."""
        kind, _, name = (model or "").partition("/")
        return model, file_fingerprint(host.model_path(kind, name)) if name else None

    @classmethod
    def execute(cls, model, family, precision):
        return io.NodeOutput(load(cls.ROLE, model, family, precision, cls.hidden.unique_id))


class TeacherRole:
    """What every node that gives a teacher shares: its socket and what it says of it."""
    ROLE = "teacher"
    EXAMPLE = "For SD-Turbo as the student: SD 2.1 or SD 2.1-base."

    @staticmethod
    def output():
        return io.Custom(TEACHER).Output("teacher", display_name="teacher", tooltip="The multi-step teacher with "
                                         "its text encoder, which the student shares.")


class StudentRole:
    """What every node that gives a student shares: its socket and what it says of it."""
    ROLE = "student"
    EXAMPLE = "A one-step model of the teacher's family: SD-Turbo for SD 2.1."

    @staticmethod
    def output():
        return io.Custom(STUDENT).Output("student", display_name="student",
                                         tooltip="The one-step student, to be personalized.")


class LoadTeacher(TeacherRole, _Loader):
    ABOUT = "Load the multi-step teacher (e.g. SD 2.1) that learns your concept and teaches the student."


class LoadStudent(StudentRole, _Loader):
    ABOUT = "Load the one-step student (e.g. SD-Turbo) that EchoDistill personalizes."
