"""A step that either completes or leaves no trace: the snapshot taken before it, restored when anything
inside it fails (a non-finite loss, out of memory, an interruption), and the step's one wait for the
device, where its losses are read and checked."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch

from .parallel import average
from .training_state import cloned, load_trainable_state, trainable_state

if TYPE_CHECKING:
    from .trainer import EchoDistillTrainer

log = logging.getLogger("echodistill")
OUT_OF_MEMORY_ADVICE = (
    "out of memory during EchoDistill step {step}; try, in this order: the LoRA parameterisation, "
    "gradient checkpointing, a batch size of 1, a lower resolution, or a smaller memory preset. "
    "The run is back at the state after step {step_done}"
)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the trainer keeps the state of the last good step."""


class TrainingOutOfMemoryError(MemoryError):
    """The device ran out of memory; the message says what to lower."""


def guarded_step(trainer: "EchoDistillTrainer") -> dict[str, float]:
    """One `train_step`, its losses read as floats. Any error inside it restores the state of the last
    completed step before it propagates (unless the config's rollback is off), so the trainer's state is
    always resumable; running out of memory is raised as TrainingOutOfMemoryError with advice."""
    rollback = trainer.config.rollback
    snapshot = None if rollback == "off" else cloned(trainable_state(trainer), "cpu" if rollback == "host" else None)
    try:
        losses = read_losses(trainer.train_step())  # the step's one wait for the device
        check_finite(losses, trainer.step)  # the snapshot undoes whatever a non-finite loss reached
    except BaseException as error:
        if snapshot is not None:
            load_trainable_state(trainer, snapshot)
        else:
            log.warning("rollback is off (memory preset), so the trainable state may hold part of step %d",
                        trainer.step + 1)
        if is_out_of_memory(error):
            raise TrainingOutOfMemoryError(
                OUT_OF_MEMORY_ADVICE.format(step=trainer.step + 1, step_done=trainer.step)) from error
        raise
    return losses


def read_losses(losses: dict) -> dict[str, float]:
    """The losses as Python floats, read from the device at once: one wait for a GPU, not one per loss."""
    tensors = {name: value.detach().float().reshape(()) for name, value in losses.items() if torch.is_tensor(value)}
    values = dict(zip(tensors, average(torch.stack(list(tensors.values()))).tolist())) if tensors else {}
    return {name: values[name] if name in values else float(value) for name, value in losses.items()}


def check_finite(losses: dict[str, float], steps_done: int) -> None:
    """Refuse the first loss of the step, in the step's order, that is not a finite number; the losses
    are averaged over the processes (read_losses), so every process stops at once."""
    for name, value in losses.items():
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"the {name} loss became {value} at step {steps_done + 1}; the run is back at the state "
                f"after step {steps_done}. Lower the learning rates or use fp32 / bf16 instead of fp16")


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)
