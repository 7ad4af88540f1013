"""The run recipe: how an EchoDistill run is put together, in one place for every face of the pack.

The command line (`cli.py`), the ComfyUI nodes (`nodes/training.py`, `nodes/loaders.py`) and the
benchmarks all compose a run here, so they share one set of defaults and one set of checks:

- `load_pair(teacher, student)`: the teacher and the one-step student from diffusers folders or
  checkpoint files, local files only, in the precision `frozen_dtype` gives each; a multi-step
  student, a model given twice and a pair that cannot share one text encoder are refused, each with
  what to choose instead.
- `plan_run(images, token=..., class_word=...)`: the run's config from a preset, a memory preset and
  the user's overrides, with everything that can be refused before a model loads refused (the
  settings, the token and class word, the photos, the image networks' size for the memory preset);
  `plan.trainer(pair)` then builds the trainer.
- `frozen_dtype(precision, device)`: the precision rule, what "auto" means, written once.

The defaults (`DEFAULT_PRESET`, `DEFAULT_MEMORY`, `DEFAULT_PRECISION`) suit an artist's GPU of 8 to 24 GB
with SD 2.1 + SD-Turbo: the 12 GB memory preset (bf16 weights, checkpointing, the paper's batch of 2),
automatic precision, and the preset chosen by the models (the paper's for SD-size models, the tiny one
for the bundled tiny models, which also need no memory saving).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import torch

from .config import PRESETS, EchoDistillConfig
from .data import ConceptDataset, read_images
from .image_networks import RunNetworks, choose_networks
from .lab.tiny import tiny_networks
from .lab.world import TINY_ASSETS  # the bundled tiny models' folders
from .loading import check_one_step, load_model
from .memory import DEFAULT_MEMORY_PRESET, MEMORY_PRESETS, MemoryPreset
from .models import DiffusionModel, TextConditioner, check_pair
from .placeholder_token import check_words
from .trainer import EchoDistillTrainer, training_resolution

AUTO = "auto"
DEFAULT_PRESET = AUTO  # the paper's for SD-size models, tiny for the bundled tiny models
PRESET_CHOICES = (AUTO, *PRESETS)
DEFAULT_MEMORY = DEFAULT_MEMORY_PRESET  # "12 GB": SD 2.1 + SD-Turbo at 512 px on the commonest cards
TINY_MEMORY = "unlimited"  # the bundled tiny models need no saving, whatever the memory choice
DEFAULT_PRECISION = AUTO
PRECISIONS: dict[str, torch.dtype | None] = {AUTO: None, "fp32": torch.float32, "fp16": torch.float16,
                                             "bf16": torch.bfloat16}
PRECISION_HELP = ("precision of the frozen weights. auto: bf16 on a GPU (fp16 where it lacks bf16; in ComfyUI, "
                  "ComfyUI's own choice per part), fp32 on a CPU. What trains is always fp32")
CONFIG_FIELDS = frozenset(f.name for f in fields(EchoDistillConfig))


# ----------------------------------------------------------------------------------------- precision


def frozen_dtype(precision: str = DEFAULT_PRECISION, device: torch.device | str = "cpu",
                 host_choice: torch.dtype | dict[str, torch.dtype] | None = None) -> torch.dtype | dict[str, torch.dtype]:
    """The dtype to load frozen weights in: the rule of what each precision choice means.

    An explicit fp32, fp16 or bf16 is kept on every device. "auto" is fp32 on a CPU (its bf16 and fp16
    kernels are many times slower); on an accelerator it is `host_choice` when a host gives one (ComfyUI's
    per-part choice, {"unet": ..., "vae": ..., "text_encoder": ...}), else bf16 on a GPU that has it and
    fp16 on one without (and on other accelerators): the precision the memory presets count on."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if PRECISIONS[precision] is not None:
        return PRECISIONS[precision]
    device = torch.device(device)
    if device.type == "cpu":
        return torch.float32
    if host_choice is not None:
        return host_choice
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def resolve_device(name: str = AUTO) -> str:
    """"auto": the GPU when there is one, else the CPU; any other name as given."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == AUTO else name


def precision_warning(memory: MemoryPreset, model: DiffusionModel,
                      device: torch.device | str | None = None) -> str | None:
    """What to say when the frozen weights are fp32 where the memory preset counts on half precision on
    `device`, the device the run trains on (default: where the model is)."""
    wanted = memory.weight_dtype(device if device is not None else model.device)
    if wanted is None or model.dtype != torch.float32:
        return None
    return (f"the models are loaded in fp32, but the {memory.name} memory preset counts on "
            f"{str(wanted).removeprefix('torch.')}; load them in that precision (precision auto does)")


# ----------------------------------------------------------------------------------------- the pair


@dataclass
class Pair:
    """A teacher and its one-step student, checked to train together. `text` is the teacher's text
    encoder, which both use; `student_text` the student's own, kept for the pair check."""
    teacher: DiffusionModel
    student: DiffusionModel
    text: TextConditioner
    student_text: TextConditioner | None = None
    tiny: bool = False  # the bundled tiny models


def is_bundled_tiny(path: str | Path) -> bool:
    """Whether `path` is one of the bundled tiny models (they run with the tiny preset)."""
    try:
        Path(path).resolve().relative_to(TINY_ASSETS.resolve())
    except ValueError:
        return False
    return True


def check_pair_paths(teacher: str | Path, student: str | Path) -> None:
    """What can be refused of a pair by its names alone, before anything is read: one model given as both,
    and a diffusers folder given as the student whose scheduler is not a one-step model's (a model that is
    not there is refused by `load_pair`)."""
    teacher, student = Path(teacher), Path(student)
    if teacher.resolve() == student.resolve():
        raise ValueError(f"{teacher} is given as both teacher and student; EchoDistill trains a multi-step "
                         "teacher (e.g. SD 2.1) with a one-step student (e.g. SD-Turbo)")
    scheduler = student / "scheduler" / "scheduler_config.json"
    if student.is_dir() and scheduler.is_file():
        try:
            settings = json.loads(scheduler.read_text())
        except (OSError, ValueError):
            return  # the folder's loader names what is wrong with it
        check_one_step(settings, student.name)


def load_pair(teacher: str | Path, student: str | Path, *, precision: str | dict[str, str] = DEFAULT_PRECISION,
              device: str = AUTO) -> Pair:
    """The teacher and the one-step student, from diffusers folders or single-file checkpoints, offline
    (local files only), frozen, on `device` ("auto": the GPU when there is one).

    `precision` is one choice for both or one per role ({"teacher": "fp32", "student": "auto"}); see
    `frozen_dtype`. Refused, each with what to do: a missing model, one model given twice, a student that
    is not a one-step model (a diffusers folder whose scheduler does not sample from the last timestep, a
    checkpoint of a multi-step family), a one-step teacher, and a pair that cannot be trained together
    (another text encoder, the same UNet weights, other latent spaces: `models.check_pair`)."""
    for role, path in (("teacher", Path(teacher)), ("student", Path(student))):
        if not path.exists():
            raise ValueError(f"the {role} {path} does not exist; give a diffusers folder or a checkpoint file")
    check_pair_paths(teacher, student)
    device = resolve_device(device)
    choices = precision if isinstance(precision, dict) else {"teacher": precision, "student": precision}
    student_model, student_text = load_model(student, role="student", device=device,
                                             dtype=frozen_dtype(choices.get("student", DEFAULT_PRECISION), device))
    teacher_model, text = load_model(teacher, role="teacher", device=device,
                                     dtype=frozen_dtype(choices.get("teacher", DEFAULT_PRECISION), device))
    check_pair(teacher_model, student_model, text, student_text)
    return Pair(teacher_model, student_model, text, student_text, tiny=is_bundled_tiny(teacher))


# ----------------------------------------------------------------------------------------- the plan


def choose_preset(preset: str = DEFAULT_PRESET, tiny: bool = False) -> str:
    """The training preset a choice means: "auto" is "tiny" for the bundled tiny models, else "paper"."""
    if preset == AUTO:
        return "tiny" if tiny else "paper"
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is not one of {', '.join(PRESET_CHOICES)}")
    return preset


def choose_memory(memory: str = DEFAULT_MEMORY, tiny: bool = False) -> MemoryPreset:
    """The memory preset a choice means; the bundled tiny models always run as "unlimited"."""
    if memory not in MEMORY_PRESETS:
        raise ValueError(f"memory preset {memory!r} is not one of {', '.join(MEMORY_PRESETS)}")
    return MEMORY_PRESETS[TINY_MEMORY if tiny else memory]


def plan_config(*, preset: str = DEFAULT_PRESET, memory: str = DEFAULT_MEMORY, tiny: bool = False,
                **settings) -> tuple[EchoDistillConfig, MemoryPreset]:
    """The run's config and memory preset: the preset's settings, the concept's words and the user's
    `settings` (config fields; None means "the preset's"), with the memory preset's memory settings and
    batch-size cap between them, so that an explicit batch size wins over the cap. Every value is checked
    against its meaning (`EchoDistillConfig`), all problems named at once."""
    unknown = sorted(set(settings) - CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a setting of a run; "
                         f"settings are the config's fields ({', '.join(sorted(CONFIG_FIELDS))})")
    chosen = {name: value for name, value in settings.items() if value is not None}
    concept = {name: chosen.pop(name) for name in ("token", "class_word", "initializer_word", "echo") if name in chosen}
    memory_preset = choose_memory(memory, tiny)
    config = memory_preset.apply(PRESETS[choose_preset(preset, tiny)].replace(**concept))
    return config.replace(**chosen), memory_preset


@dataclass
class RunPlan:
    """What the trainer needs, checked: the config, the memory preset it was fitted to, the concept's
    photos (None for a queue's shared settings) with their captions, and the image networks."""
    config: EchoDistillConfig
    memory: MemoryPreset
    preset: str  # the training preset chosen ("auto" resolved)
    images: list | None
    captions: list[str] | None
    networks: RunNetworks

    def dataset(self, student: DiffusionModel) -> ConceptDataset:
        """The concept at the run's resolution (by default the student's own size)."""
        if self.images is None:
            raise ValueError("this plan holds no concept (a queue's settings); plan each concept with its photos")
        return ConceptDataset(self.images, self.config.token, self.config.class_word,
                              training_resolution(self.config, student), captions=self.captions,
                              augment=self.config.augmentation)

    def trainer(self, pair: Pair) -> EchoDistillTrainer:
        """The trainer of this run on `pair` (which it checks again, as the trainer does for any caller)."""
        return EchoDistillTrainer(pair.teacher, pair.student, pair.text, self.dataset(pair.student), self.config,
                                  student_text=pair.student_text, discriminator_backbones=self.networks.discriminators,
                                  feature_network=self.networks.feature)

    def warnings(self, pair: Pair, device: torch.device | str | None = None) -> list[str]:
        """What the run will do but may not be what was meant: weights in another precision than the memory
        preset counts on, on `device` (the one the run trains on; default where the models are)."""
        return [message for message in (precision_warning(self.memory, pair.teacher, device),) if message]


def plan_run(images: str | Path | Sequence | None = None, *, token: str = "<sks>", class_word: str | None = None,
             initializer_word: str = "", captions: Sequence[str] | None = None, preset: str = DEFAULT_PRESET,
             memory: str = DEFAULT_MEMORY, tiny: bool = False, networks: RunNetworks | None = None,
             check_room: bool = True, **settings) -> RunPlan:
    """Plan a run before any model loads, refusing what cannot run.

    `images` is a folder of photos or a list of images (PIL images or [3, H, W] / [H, W, 3] tensors in
    0..1); None plans a queue's shared settings (each concept then checked by `concept_queue.check_queue`).
    `settings` are config fields (None: the preset's). `networks` are the image networks, already chosen
    (`choose_networks`); None uses the base teacher's features for the discriminators and the feature
    loss, and for the bundled tiny models also their own image network (`lab.tiny.tiny_networks`), as
    the paper's runs have DINO and CLIP. `tiny` marks the bundled tiny models (the tiny preset for "auto", no memory saving).
    `check_room=False` skips refusing image networks larger than the memory preset's room (for
    benchmarks that measure them).

    Refused, every message saying what to do: an unknown preset, memory preset or setting, a value outside
    its meaning, a token that is not one word, an empty class word or one holding the token, a missing or
    empty folder, an unreadable, too small or too large photo, captions that do not mention the token or
    do not match the photos in number, and image networks too large for the memory preset."""
    config, memory_preset = plan_config(preset=preset, memory=memory, tiny=tiny, token=token,
                                        class_word=class_word, initializer_word=initializer_word, **settings)
    photos = None
    if images is not None:
        if class_word is None:
            raise ValueError("give the concept's class word: what the subject is (dog, mug, person)")
        check_words(config.token, config.class_word, "class word")
        if config.initializer_word.strip():
            check_words(config.token, config.initializer_word, "initializer word")
        photos = read_images(Path(images)) if isinstance(images, (str, Path)) else list(images)
        captions = list(captions) if captions else None
        ConceptDataset(photos, config.token, config.class_word, 16, captions=captions)  # count, sizes, captions
    if networks is None:
        networks = tiny_networks() if tiny else choose_networks()  # the base teacher's features for both
    if check_room:
        memory_preset.check_image_networks(networks)
    return RunPlan(config, memory_preset, choose_preset(preset, tiny), photos, captions if photos is not None else None,
                   networks)
