"""Several concepts, trained one after another into one folder, the queue resumable where it stopped.

Each concept is a folder of photos with its token and class word; its result is `<out>/<name>.safetensors`
and its resumable state `<out>/<name>.state.safetensors`. Run again, the queue skips every concept whose
result holds all the run's steps, resumes an interrupted one from its kept state, and starts the rest.
`spread_over_devices` runs one queue per device (torch.multiprocessing), concept i on device i mod N; a
single concept uses several GPUs through parallel.py (torchrun).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch.multiprocessing as mp

from .config import EchoDistillConfig
from .data import ConceptDataset, read_images
from .image_networks import RunNetworks
from .models import DiffusionModel, TextConditioner
from .safekeeping import check_output, is_echodistill_file
from .serialization import load_tree
from .placeholder_token import check_words
from .trainer import EchoDistillTrainer, training_resolution

log = logging.getLogger("echodistill")
FINISHED, RESUMED, STARTED, INTERRUPTED = "finished before", "resumed", "started", "interrupted"


@dataclass(frozen=True)
class QueuedConcept:
    """A folder of photos of one subject, the token that will stand for it and its class word. `name`
    names its files (default: the folder's name)."""

    images: Path
    token: str
    class_word: str
    name: str = ""

    @property
    def stem(self) -> str:
        return self.name or Path(self.images).name

    def result(self, out: Path) -> Path:
        return Path(out) / f"{self.stem}.safetensors"

    def state(self, out: Path) -> Path:
        return Path(out) / f"{self.stem}.state.safetensors"


def read_queue(path: str | Path) -> list[QueuedConcept]:
    """A queue file: a JSON list of {"images": folder, "token": ..., "class_word": ..., "name": optional};
    folders are relative to the file."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
        return [QueuedConcept(path.parent / entry["images"], entry["token"], entry["class_word"], entry.get("name", ""))
                for entry in entries]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a concept queue ({error}); write a JSON list of "
                         '{"images": "photos/dog", "token": "<my-dog>", "class_word": "dog"}') from error


def check_queue(concepts: list[QueuedConcept], out: Path) -> None:
    """Everything that can be refused before a model loads: names, words, folders, the output files."""
    if not concepts:
        raise ValueError("the concept queue is empty; give at least one concept")
    stems = [concept.stem for concept in concepts]
    twice = sorted({stem for stem in stems if stems.count(stem) > 1})
    if twice:
        raise ValueError(f"two concepts would both be saved as {twice[0]}.safetensors; give each a name")
    for concept in concepts:
        check_words(concept.token, concept.class_word, "class word")
        if not Path(concept.images).is_dir():
            raise ValueError(f"{concept.images} (concept {concept.stem}) is not a folder of images")
        check_output(concept.result(out), replace_own=True)  # ours is resumed or superseded; another file never
        check_output(concept.state(out), replace_own=True)


def status(concept: QueuedConcept, out: Path, steps: int) -> str:
    """FINISHED when its result holds `steps` steps, RESUMED when a state is kept, else STARTED."""
    result, state = concept.result(out), concept.state(out)
    if result.is_file() and is_echodistill_file(result) and len(load_tree(result)["history"]) >= steps:
        return FINISHED
    return RESUMED if state.is_file() else STARTED


def default_run(trainer: EchoDistillTrainer, result: Path, state: Path) -> bool:
    """Train; True when finished. An interruption or a failure keeps the state of the last complete step."""
    try:
        trainer.train()
    except BaseException:
        if trainer.shard.main:
            trainer.save_state(state)
        raise
    return True


def train_queue(concepts: list[QueuedConcept], out: str | Path, teacher: DiffusionModel, student: DiffusionModel,
                text: TextConditioner, config: EchoDistillConfig, *, student_text: TextConditioner | None = None,
                networks: RunNetworks | None = None,
                run: Callable[[EchoDistillTrainer, Path, Path], bool] = default_run,
                describe: Callable[[str], None] = log.info) -> dict[str, str]:
    """Train `concepts` in order with `config` (its token and class word replaced by each concept's), each
    result saved to `out`; returns {name: what happened}. `run(trainer, result, state)` trains one concept
    and returns False when it stopped early (the queue stops there, to be resumed). The base models are
    the same for every concept and are left as they were."""
    out = Path(out)
    check_queue(concepts, out)
    out.mkdir(parents=True, exist_ok=True)
    outcome = {}
    for concept in concepts:
        happened = status(concept, out, config.steps)
        if happened == FINISHED:
            describe(f"{concept.stem}: finished before, not trained again ({concept.result(out)})")
            outcome[concept.stem] = happened
            continue
        settings = config.replace(token=concept.token, class_word=concept.class_word, initializer_word="")
        dataset = ConceptDataset(read_images(concept.images), settings.token, settings.class_word,
                                 training_resolution(settings, student), augment=settings.augmentation)
        trainer = EchoDistillTrainer(teacher, student, text, dataset, settings, student_text=student_text,
                                     **(dict(discriminator_backbones=networks.discriminators,
                                             feature_network=networks.feature) if networks else {}))
        if happened == RESUMED:
            trainer.load_state(concept.state(out))
        describe(f"{concept.stem}: {happened} at step {trainer.step} of {settings.steps}")
        if not run(trainer, concept.result(out), concept.state(out)):
            outcome[concept.stem] = INTERRUPTED
            describe(f"{concept.stem}: interrupted after step {trainer.step}; run the queue again to resume")
            return outcome
        if trainer.shard.main:
            trainer.personalization.save(concept.result(out))
        outcome[concept.stem] = happened
    return outcome


def spread_over_devices(concepts: list[QueuedConcept], devices: list[str],
                        train: Callable[[list[QueuedConcept], str], None]) -> None:
    """One process per device, each running `train(its concepts, device)` on concepts i, i + N, ... (N
    devices); `train` must be a module-level function (it is sent to the processes by name)."""
    mp.spawn(_on_device, args=(devices, concepts, train), nprocs=len(devices), join=True)


def _on_device(index: int, devices: list[str], concepts: list[QueuedConcept], train) -> None:
    mine = concepts[index :: len(devices)]
    if mine:
        train(mine, devices[index])
