"""A run: iterations until the config's steps, each guarded (rollback.py), with its losses kept in the
history and reported, and a preview of the student now and then."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from .placeholder_token import PlaceholderEmbedding
from .rollback import guarded_step
from .sampling import generate_student

if TYPE_CHECKING:
    from .trainer import EchoDistillTrainer


@dataclass
class StepReport:
    step: int
    total: int
    losses: dict[str, float]
    preview: torch.Tensor | None  # [H, W * prompts, 3] in [0, 1]: at step 1, every `preview_every` steps, the last


def train(trainer: "EchoDistillTrainer", callback: Callable[[StepReport], None] | None = None,
          should_cancel: Callable[[], bool] | None = None) -> bool:
    """Run until `config.steps`; True when finished, False when `should_cancel` stopped it.

    Any error inside a step (a non-finite loss, out of memory, an interruption) restores the state
    of the last completed step before it propagates, so `state_dict()` is always resumable (unless
    the config's rollback is off).
    """
    config = trainer.config
    with trainer.applied(), trainer.offload.parked():
        while trainer.step < config.steps:
            if should_cancel is not None and should_cancel():
                return False
            losses = guarded_step(trainer)
            trainer.step += 1
            trainer.history.append({"step": trainer.step, **losses})
            if callback is not None:
                preview = trainer.preview() if preview_due(trainer) else None
                callback(StepReport(trainer.step, config.steps, losses, preview))
    return True


def preview_due(trainer: "EchoDistillTrainer") -> bool:
    every, step = trainer.config.preview_every, trainer.step  # the first step too: something to see early
    return every > 0 and (step == 1 or step % every == 0 or step == trainer.config.steps)


def preview_prompts(trainer: "EchoDistillTrainer") -> list[str]:
    """The config's preview prompts, one a line; none given: "a photo of a <token> <class word>"."""
    lines = [line.strip() for line in trainer.config.preview_prompt.splitlines() if line.strip()]
    return lines or [f"a photo of a {trainer.concept.subject}"]


def preview(trainer: "EchoDistillTrainer") -> torch.Tensor:
    """The student's one-step images of the preview prompts with the preview seed, side by side in prompt
    order: [H, W * prompts, 3] in [0, 1]."""
    applied = isinstance(trainer.text.text_encoder.get_input_embeddings(), PlaceholderEmbedding)
    on_device = trainer.offload.using(trainer.text.text_encoder, trainer.student.vae)
    prompts = preview_prompts(trainer)
    with nullcontext() if applied else trainer.applied(), on_device:
        images = generate_student(trainer.student, trainer.text, prompts,
                                  [trainer.config.preview_seed] * len(prompts))
    return torch.cat(list(images), dim=1)
