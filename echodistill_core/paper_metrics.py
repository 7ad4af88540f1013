"""The paper's figures for a personalized model: CLIP-I, DINO and CLIP-T, by the DreamBench protocol.

- **CLIP-I**: how much the samples look like the concept's photos: the cosine similarity between the
  CLIP image embedding of every sample and of every photo, clamped at 0, averaged (1 = identical).
- **DINO**: the same with DINO's (or DINOv2's) CLS token, which is more sensitive to the subject's own
  identity than CLIP, less to its class.
- **CLIP-T**: how well the samples follow their prompts: the cosine similarity, clamped at 0, between each
  sample's CLIP image embedding and the CLIP text embedding of its prompt, the prompt saying the class word
  where it said the token ("a <sks> dog on the beach" -> "a dog on the beach").

The protocol: the student's samples in one step (Euler ancestral with guidance 0, which one step reduces
to) for every prompt with seeds 0-3; the paper's networks are DINOv2 ViT-L/14 and CLIP ViT-L/14 at 336 px.
The same figures for the untouched model, given the class word for the token, are the baseline.

Every network is read from the user's files, offline (image_networks.py, text_networks.py). Without them
the figures are made with what the pack has, under their own names: the tiny world's judge ("judge-I")
for the tiny 32 px world models, else the frozen base teacher's own features ("teacher-I"); such figures
compare runs of one model, not papers.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .lab import world
from .backbones import TeacherUNetFeatures
from .checkpoints import read_checkpoint
from .data import ConceptDataset
from .image_networks import load_clip_vision, load_dino
from .lab.judge import Judge, load_judge
from .models import DiffusionModel, TextConditioner
from .personalization import Personalization
from .sampling import generate_student, generate_teacher
from .text_networks import (TEXT_ADVICE, TextTower, clip_folder_config, clip_weights_file, has_text_tower,
                            load_clip_text)

PAPER_SEEDS = (0, 1, 2, 3)
# DreamBench's prompts; {} is the subject ("<token> <class word>", or the class word alone). Its live
# subjects (dogs and cats) have their own: the first ten, then outfits.
_SETTINGS = tuple("a {} " + context for context in (
    "in the jungle", "in the snow", "on the beach", "on a cobblestone street", "on top of pink fabric",
    "on top of a wooden floor", "with a city in the background", "with a mountain in the background",
    "with a blue house in the background", "on top of a purple rug in a forest"))
_CHANGES = ("a red {}", "a purple {}", "a shiny {}", "a wet {}", "a cube shaped {}")
DREAMBENCH_PROMPTS = _SETTINGS + tuple("a {} " + context for context in (
    "with a wheat field in the background", "with a tree and autumn leaves in the background",
    "with the Eiffel Tower in the background", "floating on top of water", "floating in an ocean of milk",
    "on top of green grass with sunflowers around it", "on top of a mirror",
    "on top of the sidewalk in a crowded street", "on top of a dirt road", "on top of a white rug",
)) + _CHANGES
DREAMBENCH_LIVE_PROMPTS = _SETTINGS + tuple("a {} " + outfit for outfit in (
    "wearing a red hat", "wearing a santa hat", "wearing a rainbow scarf", "wearing a black top hat and a monocle",
    "in a chef outfit", "in a firefighter outfit", "in a police outfit", "wearing pink glasses",
    "wearing a yellow shirt", "in a purple wizard outfit")) + _CHANGES
LIVE_CLASSES = ("dog", "cat")  # DreamBench's live subjects
# The paper's EchoDistill student (one step, SD-Turbo taught by SD 2.1, DreamBench) and the network that
# must have made a figure for it to stand beside ours.
PAPER_FIGURES = {"CLIP-I": (0.783, "CLIP ViT-L/14 at 336 px"), "DINO": (0.637, "DINOv2 ViT-L/14 at 518 px")}
MODELS = ("personalized", "untouched")


def dreambench_prompts(class_word: str) -> tuple[str, ...]:
    """DreamBench's 25 prompts for a subject of `class_word`: the live subjects' for dogs and cats."""
    return DREAMBENCH_LIVE_PROMPTS if class_word.strip().lower() in LIVE_CLASSES else DREAMBENCH_PROMPTS


def read_prompts(text: str) -> list[str]:
    """Evaluation prompts, one a line, {} where the subject goes; blank lines and # comments skipped."""
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    wrong = [prompt for prompt in prompts if prompt.count("{}") != 1]
    if wrong or not prompts:
        raise ValueError(f"prompt {wrong[0]!r} needs one {{}} where the subject goes" if wrong else
                         "the prompt file holds no prompts; write one a line, e.g. 'a {} on the beach'")
    return prompts


class TeacherImageFeatures(nn.Module):
    """The frozen base teacher's pooled features (backbones.TeacherUNetFeatures) of images, with the empty
    prompt and fixed noise, as an image network: images [B, 3, H, W] in [-1, 1] -> [B, D]."""

    name = "the base teacher's own features"

    def __init__(self, teacher: DiffusionModel, text: TextConditioner):
        super().__init__()
        self._models = [teacher, text]  # held, not owned
        self.features = TeacherUNetFeatures(teacher, None, (0, 0))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        teacher, text = self._models
        latents = teacher.encode(images.to(teacher.device, teacher.dtype))
        empty = text([""]).expand(len(images), -1, -1)
        return self.features(latents, empty, torch.Generator().manual_seed(0))


class JudgeImageFeatures(nn.Module):
    """The tiny world's judge (judge.py) as an image network: its embedding of images seen at 32 px."""

    name = "the tiny world's judge"

    def __init__(self, judge: Judge):
        super().__init__()
        self.judge = judge

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = F.interpolate(images.float().cpu(), size=(world.IMAGE_SIZE,) * 2, mode="bilinear", antialias=True)
        return self.judge.embedding(images)


@dataclass
class Judges:
    """The networks that make the figures: an image network per image figure ("CLIP-I", "DINO", or the
    fallbacks), and for CLIP-T the CLIP image tower with its text tower. `notes` says what is missing."""

    image: dict[str, nn.Module]
    text: tuple[nn.Module, TextTower] | None = None
    notes: list[str] = field(default_factory=list)

    def networks(self) -> dict[str, str]:
        named = {figure: network.name for figure, network in self.image.items()}
        if self.text is not None:
            named["CLIP-T"] = f"{self.text[0].name} with {self.text[1].name}"
        return named


def load_judges(clip: str | Path | None = None, dino: str | Path | None = None, *,
                dtype: torch.dtype = torch.float32) -> Judges:
    """The paper's networks from the user's files: `clip` a whole CLIP model (CLIP-I and CLIP-T; an image
    tower alone, as ComfyUI's clip_vision files are, gives CLIP-I only) and `dino` a DINO or DINOv2 model."""
    image, text, notes = {}, None, []
    if clip is not None:
        clip = Path(clip)
        weights = clip_weights_file(clip) if clip.is_dir() else clip
        vision_config = clip_folder_config(clip, "vision") if clip.is_dir() else None
        image["CLIP-I"] = load_clip_vision(weights, config=vision_config, dtype=dtype)
        if has_text_tower(read_checkpoint(weights)):
            tower = load_clip_text(clip, dtype=dtype)
            if tower.feature_dim != image["CLIP-I"].feature_dim:
                raise ValueError(f"{tower.name} gives {tower.feature_dim}-wide embeddings and {image['CLIP-I'].name} "
                                 f"{image['CLIP-I'].feature_dim}-wide: give one whole CLIP model")
            text = (image["CLIP-I"], tower)
        else:
            notes.append(f"no CLIP-T: {weights.name} has no text tower. {TEXT_ADVICE}")
    else:
        notes.append("no CLIP-I or CLIP-T: no CLIP model given (the paper's: CLIP ViT-L/14 at 336 px)")
    if dino is not None:
        image["DINO"] = load_dino(dino, dtype=dtype)
    else:
        notes.append("no DINO: no DINO model given (the paper's: DINOv2 ViT-L/14)")
    return Judges(image, text, notes)


def with_fallback(judges: Judges, teacher: DiffusionModel, text: TextConditioner) -> Judges:
    """`judges`, or when it has no image network, what the pack has: the tiny world's judge for models of
    the tiny world (32 px images, in pixel space or through a VAE), else the frozen base teacher's features."""
    if judges.image:
        return judges
    if teacher.image_size() == world.IMAGE_SIZE:
        figure, network = "judge-I", JudgeImageFeatures(load_judge())
    else:
        figure, network = "teacher-I", TeacherImageFeatures(teacher, text)
    note = (f"{figure} stands in for CLIP-I and DINO: {network.name}, not a network of the paper; it compares "
            "runs of these models, not papers")
    return Judges({figure: network}, judges.text, judges.notes + [note])


@torch.no_grad()
def image_similarity(network: nn.Module, samples: torch.Tensor, references: torch.Tensor) -> float:
    """CLIP-I / DINO: mean cosine similarity, clamped at 0, of every sample with every reference
    (both [B, 3, H, W] in [-1, 1])."""
    a, b = F.normalize(network(samples).float(), dim=1), F.normalize(network(references).float(), dim=1)
    return (a @ b.T).clamp(min=0).mean().item()


@torch.no_grad()
def text_alignment(image_network: nn.Module, text_tower: TextTower, samples: torch.Tensor,
                   prompts: list[str]) -> float:
    """CLIP-T: mean cosine similarity, clamped at 0, of each sample with its own prompt."""
    a = F.normalize(image_network(samples).float(), dim=1)
    b = F.normalize(text_tower(prompts).float().to(a.device), dim=1)
    return (a * b).sum(dim=1).clamp(min=0).mean().item()


def figures(judges: Judges, samples: torch.Tensor, references: torch.Tensor, class_prompts: list[str]) -> dict:
    """Every figure `judges` can make of `samples` [B, 3, H, W] in [-1, 1], drawn for `class_prompts` (the
    prompts with the class word for the token)."""
    scores = {figure: image_similarity(network, samples, references) for figure, network in judges.image.items()}
    if judges.text is not None:
        scores["CLIP-T"] = text_alignment(*judges.text, samples, class_prompts)
    return scores


@dataclass
class ConceptScores:
    """The figures of a personalized model and of the untouched one, the networks that made them, what
    is missing, and a grid of the scored samples."""

    figures: dict[str, dict[str, float]]  # "personalized" / "untouched" -> figure -> value
    networks: dict[str, str]
    notes: list[str]
    grid: torch.Tensor  # [H, W, 3] in [0, 1]
    role: str = "student"

    def table(self) -> str:
        """Markdown: a row per figure, our two models and, where the paper's network made it, the paper's."""
        lines = [f"| figure | {self.role}, personalized | {self.role}, untouched | paper (EchoDistill student) "
                 "| network |", "| --- | --- | --- | --- | --- |"]
        for figure, network in self.networks.items():
            paper, paper_network = PAPER_FIGURES.get(figure, (None, None))
            same = paper is not None and network.startswith(paper_network)
            lines.append(f"| {figure} | {self.figures['personalized'][figure]:.3f} | "
                         f"{self.figures['untouched'][figure]:.3f} | {f'{paper:.3f}' if same else '-'} | {network} |")
        return "\n".join(lines + [f"\n{note}" for note in self.notes])

    def to_dict(self) -> dict:
        return {"figures": self.figures, "networks": self.networks, "notes": self.notes, "role": self.role}


def evaluate_concept(teacher: DiffusionModel, student: DiffusionModel, text: TextConditioner,
                     personalization: Personalization, photos: list, judges: Judges, *,
                     prompts: tuple[str, ...] | None = None, seeds: tuple[int, ...] = PAPER_SEEDS,
                     role: str = "student", progress: Callable[[int, int], None] | None = None) -> ConceptScores:
    """The figures of the personalized `role` ("student": one step; "teacher": DDIM 25 steps with the
    run's guidance) against its concept's `photos` (PIL images or tensors), and of the same model untouched,
    given the class word for the token. `prompts` have {} where the subject goes (default: DreamBench's for
    the class word); each is drawn with every seed. `progress(done, total)` is called after each prompt of each model (and may raise to stop)."""
    config = personalization.config
    prompts = prompts or dreambench_prompts(config.class_word)
    judges = with_fallback(judges, teacher, text)
    model = student if role == "student" else teacher
    references = torch.stack(ConceptDataset(photos, config.token, config.class_word, model.image_size(),
                                            augment=False).images)
    subject = f"{config.token} {config.class_word}"
    class_prompts = [template.format(config.class_word) for template in prompts for _ in seeds]
    token_prompts = [template.format(subject) for template in prompts for _ in seeds]
    all_seeds = [seed for _ in prompts for seed in seeds]

    def draw(prompt_list: list[str], personalized: bool, done: int) -> torch.Tensor:
        applied = personalization.applied(text, **{role: model}) if personalized else nullcontext()
        images = []
        with applied:
            for start in range(0, len(prompt_list), len(seeds)):
                batch = slice(start, start + len(seeds))
                if role == "student":
                    images.append(generate_student(student, text, prompt_list[batch], all_seeds[batch]))
                else:
                    images.append(generate_teacher(teacher, text, prompt_list[batch], all_seeds[batch],
                                                   guidance_scale=config.guidance_scale))
                if progress is not None:
                    progress(done + start // len(seeds) + 1, 2 * len(prompts))
        return torch.cat(images).permute(0, 3, 1, 2) * 2 - 1

    samples = {"personalized": draw(token_prompts, True, 0), "untouched": draw(class_prompts, False, len(prompts))}
    scores = {name: figures(judges, images, references, class_prompts) for name, images in samples.items()}
    return ConceptScores(scores, judges.networks(), judges.notes, sample_grid(references, samples, len(seeds)), role)


def sample_grid(references: torch.Tensor, samples: dict[str, torch.Tensor], seeds: int,
                tile: int = 128) -> torch.Tensor:
    """[H, W, 3] in [0, 1]: the concept's photos on the first row, then a row per prompt with the
    personalized model's samples (one per seed), a gap, and the untouched model's. Small images are
    enlarged in whole pixels to about `tile` px."""
    personalized, untouched = samples["personalized"], samples["untouched"]
    size = personalized.shape[-1]
    scale = max(1, tile // size)
    blank = torch.ones(1, 3, size, size)
    columns = 2 * seeds + 1
    rows = [torch.cat([references[:columns], blank.expand(max(0, columns - len(references)), -1, -1, -1)])]
    for start in range(0, len(personalized), seeds):
        rows.append(torch.cat([personalized[start : start + seeds].cpu(), blank, untouched[start : start + seeds].cpu()]))
    tiles = torch.stack(rows)  # [rows, columns, 3, size, size]
    grid = tiles.permute(2, 0, 3, 1, 4).reshape(3, len(rows) * size, columns * size)
    grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    return ((grid.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0)
