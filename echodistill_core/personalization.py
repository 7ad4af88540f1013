"""What EchoDistill learns, apart from the frozen base models: the placeholder token's vector and
the adapters of the teacher and the student. Saved as one safetensors file with the config and the
training log; loaded back onto the same base models it reproduces their outputs exactly."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from torch import nn

from .adapters import AdapterSet
from .config import EchoDistillConfig
from .models import DiffusionModel, TextConditioner
from .serialization import ResultFileError, load_tree, save_tree
from .placeholder_token import PlaceholderToken

FORMAT = "echodistill-result/1"


class Personalization(nn.Module):
    def __init__(self, config: EchoDistillConfig, token: PlaceholderToken, teacher_adapters: AdapterSet,
                 student_adapters: AdapterSet):
        super().__init__()
        self.config, self.token = config, token
        self.teacher_adapters, self.student_adapters = teacher_adapters, student_adapters
        self.history: list[dict] = []
        self.base_models: dict[str, str] = {}

    @classmethod
    def create(cls, config: EchoDistillConfig, teacher: DiffusionModel, student: DiffusionModel,
               text: TextConditioner) -> "Personalization":
        """Fresh adapters (Custom Diffusion copies of the pretrained K/V, or zero LoRA) and a new token."""
        word_name = "initializer word" if config.initializer_word else "class word"
        token = PlaceholderToken.create(text, config.token, config.initializer_word or config.class_word, word_name)
        options = dict(kind=config.parameterisation, rank=config.lora_rank, alpha=config.lora_alpha,
                       all_attention=config.lora_all_attention)
        personalization = cls(config, token, AdapterSet(teacher.unet, **options), AdapterSet(student.unet, **options))
        personalization.base_models = {"teacher": teacher.name, "student": student.name}
        return personalization

    @contextmanager
    def applied(self, text: TextConditioner, teacher: DiffusionModel | None = None,
                student: DiffusionModel | None = None) -> Iterator[None]:
        """Run the text encoder (and whichever UNets are given) personalized, for the block's duration."""
        with ExitStack() as stack:
            stack.enter_context(self.token.applied(text))
            if teacher is not None:
                stack.enter_context(self.teacher_adapters.applied(teacher.unet))
            if student is not None:
                stack.enter_context(self.student_adapters.applied(student.unet))
            yield

    def to_tree(self) -> dict:
        return {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "token": {"token": self.token.token, "vector": self.token.vector},
            "teacher": self.teacher_adapters.state_dict(),
            "student": self.student_adapters.state_dict(),
            "history": self.history,
            "base_models": self.base_models,
        }

    def save(self, path: str | Path) -> Path:
        """One safetensors file (atomic write): both models' adapters, the token, config and log."""
        metadata = {"echodistill.trigger_word": self.token.token, "echodistill.class_word": self.config.class_word}
        return save_tree(path, self.to_tree(), metadata)

    @classmethod
    def load(cls, path: str | Path, teacher: DiffusionModel, student: DiffusionModel,
             text: TextConditioner) -> "Personalization":
        """A saved result, attached to the base models it was trained on."""
        tree = load_tree(path)
        if tree.get("format") != FORMAT:
            raise ResultFileError(f"{path} is not an EchoDistill result ({tree.get('format')!r})")
        config = EchoDistillConfig.from_dict(tree["config"])
        personalization = cls.create(config, teacher, student, text)
        try:
            personalization.teacher_adapters.load_state_dict(tree["teacher"])
            personalization.student_adapters.load_state_dict(tree["student"])
            personalization.token.vector.data.copy_(tree["token"]["vector"])
        except (RuntimeError, KeyError) as error:
            raise ResultFileError(
                f"{path} was trained on other base models ({tree.get('base_models')}) and does not fit "
                f"these ({teacher.name}, {student.name}): {error}"
            ) from error
        personalization.history = tree["history"]
        personalization.base_models = tree["base_models"]
        return personalization
