"""Training states: everything one iteration changes, and the files a run resumes from.

`trainable_state` is what a step changes (the learned tensors, the optimizers' moments, the generator,
the counters): the rollback snapshot (rollback.py) and the tensors of a saved state. A state file adds
the config and what the state is only valid with (`trained_on`), and is refused when either differs.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import RESUMABLE_CHANGES, EchoDistillConfig
from .models import DiffusionModel
from .serialization import ResultFileError, load_tree, save_tree

if TYPE_CHECKING:
    from .trainer import EchoDistillTrainer

log = logging.getLogger("echodistill")
STATE_FORMAT = "echodistill-state/1"


def trainable_state(trainer: "EchoDistillTrainer") -> dict:
    """What one step changes: the rollback snapshot, and the tensors of a saved state. Shares its tensors."""
    return {
        "step": trainer.step,
        "echo_samples": trainer.echo_samples,
        "history_length": len(trainer.history),
        "generator": trainer.generator.get_state(),
        "token": trainer.token.vector,
        "teacher_adapters": trainer.teacher_adapters.state_dict(),
        "student_adapters": trainer.student_adapters.state_dict(),
        "discriminators": [d.head.state_dict() for d in trainer.discriminators],
        "optimizers": {name: optimizer.state_dict() for name, optimizer in trainer.optimizers.items()},
    }


def load_trainable_state(trainer: "EchoDistillTrainer", state: dict) -> None:
    """Restore `state`, which must not be shared: optimizers keep its tensors."""
    trainer.step, trainer.echo_samples = int(state["step"]), int(state["echo_samples"])
    del trainer.history[int(state["history_length"]):]
    trainer.generator.set_state(state["generator"])
    trainer.token.vector.data.copy_(state["token"])
    trainer.teacher_adapters.load_state_dict(state["teacher_adapters"])
    trainer.student_adapters.load_state_dict(state["student_adapters"])
    for discriminator, head in zip(trainer.discriminators, state["discriminators"], strict=True):
        discriminator.head.load_state_dict(head)
    for name, optimizer in trainer.optimizers.items():
        optimizer.load_state_dict(state["optimizers"][name])


def state_dict(trainer: "EchoDistillTrainer") -> dict:
    return {"format": STATE_FORMAT, "config": trainer.config.to_dict(), "trained_on": trained_on(trainer),
            "history": [dict(entry) for entry in trainer.history], **cloned(trainable_state(trainer))}


def trained_on(trainer: "EchoDistillTrainer") -> dict:
    """What a state is only valid with: the concept images (a digest of them as prepared) and each
    base model (its adapted layers' mean absolute weights, which survive a change of precision)."""
    images = hashlib.sha256()
    for image in trainer.concept.images:
        images.update(image.float().contiguous().numpy().tobytes())
    return {"concept_images": images.hexdigest(),
            "teacher": _weight_signature(trainer.teacher, trainer.teacher_adapters),
            "student": _weight_signature(trainer.student, trainer.student_adapters)}


def load_state_dict(trainer: "EchoDistillTrainer", state: dict) -> None:
    if state.get("format") != STATE_FORMAT:
        raise ResultFileError(f"not an EchoDistill training state ({state.get('format')!r})")
    saved, mine = EchoDistillConfig.from_dict(state["config"]).to_dict(), trainer.config.to_dict()
    changed = [key for key in saved if saved[key] != mine[key] and key not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(f"the saved state was trained with other settings ({', '.join(changed)}); "
                         f"resume with the same settings (only {', '.join(RESUMABLE_CHANGES)} may change)")
    _check_trained_on(trainer, state.get("trained_on"))
    trainer.history[:] = [dict(entry) for entry in state["history"]]
    load_trainable_state(trainer, cloned(state))


def _check_trained_on(trainer: "EchoDistillTrainer", saved: dict | None) -> None:
    if saved is None:
        log.warning("this state does not record what it was trained on; resuming without checking the images and models")
        return
    mine = trained_on(trainer)
    if saved["concept_images"] != mine["concept_images"]:
        raise ValueError("the saved state was trained on other concept images; resume with the same photos "
                         "(same files, same order, same resolution), or start fresh")
    for role in ("teacher", "student"):
        if not torch.allclose(torch.tensor(saved[role]), torch.tensor(mine[role]), rtol=1e-2, atol=1e-6):
            raise ValueError(f"the saved state was trained with another {role} model; resume with the same "
                             f"{role} (any precision), or start fresh")


def save_state(trainer: "EchoDistillTrainer", path: str | Path) -> Path:
    """A resumable training state, one safetensors file, written atomically."""
    return save_tree(path, state_dict(trainer))


def load_state(trainer: "EchoDistillTrainer", path: str | Path) -> None:
    """Continue from a state file; a damaged or malformed one is refused naming the file."""
    state = load_tree(path)
    try:
        load_state_dict(trainer, state)
    except (KeyError, TypeError, AttributeError, IndexError, RuntimeError) as error:
        raise ResultFileError(f"{path} is an EchoDistill state with malformed contents ({type(error).__name__}: "
                              f"{error}); it cannot be resumed: start fresh or use another state") from error


def cloned(tree, device: str | None = None):
    """A copy of every tensor in `tree`, on `device` (None: where each one is)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to(device, copy=True)
    if isinstance(tree, dict):
        return {key: cloned(value, device) for key, value in tree.items()}
    if isinstance(tree, list):
        return [cloned(value, device) for value in tree]
    return tree


def _weight_signature(model: DiffusionModel, adapters) -> list[float]:
    """The mean absolute frozen weight of each adapted layer: tells models apart, survives bf16 / fp16."""
    signature = []
    for path in adapters.paths():
        layer = model.unet.get_submodule(path)
        weight = getattr(layer, "base", layer).weight
        signature.append(float(weight.detach().abs().float().mean()))
    return signature
