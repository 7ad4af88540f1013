"""What travels along the pack's custom sockets. Only equal type strings connect in ComfyUI, so a
teacher cannot be wired where a student belongs."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..echodistill_core.models import DiffusionModel, TextConditioner
from ..echodistill_core.personalization import Personalization

TEACHER = "ECHODISTILL_TEACHER"
STUDENT = "ECHODISTILL_STUDENT"
CONCEPT = "ECHODISTILL_CONCEPT"
ONE_STEP_MODEL = "ECHODISTILL_ONE_STEP_MODEL"
PERSONALIZED_TEACHER = "ECHODISTILL_PERSONALIZED_TEACHER"
IMAGE_NETWORKS = "ECHODISTILL_IMAGE_NETWORKS"  # echodistill_core.image_networks.RunNetworks
CATEGORY = "EchoDistill"


@dataclass
class LoadedModel:
    """A base model from a loader node: frozen, shared with ComfyUI's cache, never modified."""
    model: DiffusionModel
    text: TextConditioner
    name: str
    tiny: bool = False
    family: str = ""  # a checkpoint file's family (echodistill_core.families); "" for folders and bundled


@dataclass
class Concept:
    images: list[torch.Tensor]  # [3, H, W] in 0..1, any sizes
    token: str
    class_word: str
    initializer_word: str = ""
    captions: list[str] | None = None


@dataclass
class Personalized:
    """A base model with an EchoDistill personalization applied while sampling."""
    base: LoadedModel
    text: TextConditioner  # the shared (teacher's) text encoder
    personalization: Personalization
    role: str  # "student" or "teacher"
    history: list[dict] = field(default_factory=list)

    @contextmanager
    def applied(self):
        models = {self.role: self.base.model}
        with self.personalization.applied(self.text, **models):
            yield

    @property
    def token(self) -> str:
        return self.personalization.config.token
