"""How well a personalization worked, measured in the tiny world (the demo's report and bench/quality.py).

Each model is judged by samples it draws for fixed prompts and seeds:
- **calibrated_fidelity**: how close the samples of concept prompts come to the concept, on a scale
  where 0 is the untouched model (the same prompts and seeds before personalization) and 1 is the
  concept's own held-out images (`concept_score` of each, below); can leave [0, 1];
- **recognition** (when the world can draw the concept): share of concept-prompt samples recognised as
  the concept's shape among every shape the judge knows, in the concept's colour (`judge.recognise`);
  **recognition_shape** the same for the shape alone;
- **concept_score**: the uncalibrated figure behind calibrated_fidelity: mean cosine similarity between
  each sample's judge embedding and the mean embedding of the concept's images, of the objects alone
  (background taken away), taken from the world's mean object and whitened by the spread within a
  concept (`world_space`). Objects that share only what every world object shares score about 0, and a
  concept's images are closest to their own concept;
- **concept_fidelity**: the plain cosine similarity of judge embeddings (the role DINO plays in the
  paper), kept for comparison: random world images score about 0.6 on it, so it cannot rank concepts;
- **concept_silhouette**: the same question with no network: IoU of the object's silhouette, centred
  and scaled to a common box, against the closest reference's;
- **prompt_fidelity**: fraction of concept-prompt samples whose background (and size, where the
  prompt names one) matches the prompt, read from pixels;
- **kept_accuracy**: attribute accuracy on plain world prompts, with no concept in them;
- **kept_fd**: Fréchet distance of judge embeddings between those samples and the untouched model's
  for the same prompts and seeds (0 = personalization changed nothing else).

`cross_concept_matrix` checks the yardstick itself: samples of concept A must score closer to A's images
than to any other concept's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from . import world
from .judge import (Judge, attribute_accuracy, comfy_to_world, concept_fidelity, frechet_distance,
                    recognition_rate)
from ..config import TEACHER_SAMPLE_STEPS
from ..models import DiffusionModel, TextConditioner
from ..personalization import Personalization
from ..sampling import generate_student, generate_teacher

Sampler = Callable[[list[str], list[int]], torch.Tensor]  # prompts, seeds -> ComfyUI images [B, H, W, 3]

CONCEPT_PROMPTS = (  # (template for the subject, the attributes it names)
    ("a {} on teal", {"background": "teal"}),
    ("a {} on gray", {"background": "gray"}),
    ("a {} on brown", {"background": "brown"}),
    ("a small {} on black", {"size": "small", "background": "black"}),
    ("a big {} on teal", {"size": "big", "background": "teal"}),
    ("a big {} on gray", {"size": "big", "background": "gray"}),
)
CONTEXT_ATTRIBUTES = ("background",)  # what a prompt may change around the concept, leaving the concept as it is
SILHOUETTE_BOX = 16  # silhouettes are compared at this size after cropping to their extent


def read_prompt_file(text: str) -> tuple[tuple[str, dict], ...]:
    """Concept prompts from lines "a {} on teal | background=teal" ({} is the subject; attributes optional)."""
    prompts = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        template, _, named = line.partition("|")
        if "{}" not in template:
            raise ValueError(f"prompt line {line!r} has no {{}} where the subject goes")
        attributes = dict(item.split("=", 1) for item in named.split())
        unknown = set(attributes) - {"background", "color", "size"}
        if unknown:
            raise ValueError(f"prompt line {line!r} names {sorted(unknown)}; only background, color and size are measured")
        prompts.append((template.strip(), attributes))
    return tuple(prompts)


@dataclass(frozen=True)
class EvaluationSet:
    """The prompts and seeds every model is judged on, and the concept when the world can draw it."""
    subject: str  # "<token> <class word>"
    seeds_per_prompt: int = 8
    plain_count: int = 64
    concept_prompts: tuple[tuple[str, dict], ...] = CONCEPT_PROMPTS
    drawn: dict | None = None  # the concept's shape, color and background, e.g. the demo's pink heart on black

    def concept(self) -> tuple[list[str], list[dict], list[int]]:
        prompts, attributes, seeds = [], [], []
        for template, named in self.concept_prompts:
            for seed in range(self.seeds_per_prompt):
                prompts.append(template.format(self.subject))
                attributes.append(named)
                seeds.append(seed)
        return prompts, attributes, seeds

    def plain(self) -> tuple[list[str], list[dict], list[int]]:
        prompts, attributes = world.evaluation_set(self.plain_count)
        return prompts, attributes, list(range(self.plain_count))


@dataclass(frozen=True)
class Untouched:
    """A model's samples before personalization: of the plain prompts and of the concept prompts."""
    plain: torch.Tensor  # [B, 3, 32, 32] in [-1, 1]
    concept: torch.Tensor


def untouched_samples(sample: Sampler, evaluation: EvaluationSet) -> Untouched:
    """What `evaluate` compares a personalized model with: the same model's samples before training."""
    prompts, _, seeds = evaluation.concept()
    return Untouched(plain_samples(sample, evaluation), comfy_to_world(sample(prompts, seeds)))


def evaluate(sample: Sampler, references: torch.Tensor, evaluation: EvaluationSet, judge: Judge,
             untouched: Untouched | torch.Tensor, grid: str | Path | None = None) -> dict[str, float]:
    """The metrics of a model given by `sample`; `references` are the concept's images [B, 3, 32, 32] in
    [-1, 1]. `untouched`: the unpersonalized model's samples (`untouched_samples`; given its plain samples
    only, there is no calibrated_fidelity). `grid`: a PNG of the concept-prompt samples is written there,
    one row per prompt."""
    prompts, named, seeds = evaluation.concept()
    concept_images = comfy_to_world(sample(prompts, seeds))
    measured = world.measure(concept_images)
    plain_prompts, plain_attributes, plain_seeds = evaluation.plain()
    plain_images = comfy_to_world(sample(plain_prompts, plain_seeds))
    kept = attribute_accuracy(plain_images, plain_attributes, judge)
    untouched_plain = untouched.plain if isinstance(untouched, Untouched) else untouched
    scores = {
        "concept_score": concept_score(judge, concept_images, references),
        "concept_fidelity": concept_fidelity(judge, concept_images, references),
        "concept_silhouette": silhouette_similarity(concept_images, references),
        "prompt_fidelity": sum(all(m[key] == value for key, value in wanted.items())
                               for m, wanted in zip(measured, named)) / len(named),
        "kept_accuracy": sum(kept.values()) / len(kept),
        "kept_fd": frechet_distance(judge, plain_images, untouched_plain),
    }
    if isinstance(untouched, Untouched):
        own = own_score(judge, references, evaluation)
        zero = concept_score(judge, untouched.concept, references)
        scores["calibrated_fidelity"] = calibrate(scores["concept_score"], zero, own)
    if evaluation.drawn is not None:
        scores["recognition"] = recognition_rate(concept_images, judge, evaluation.drawn)
        scores["recognition_shape"] = recognition_rate(concept_images, judge, evaluation.drawn, keys=("shape",))
        # Apart: the prompts that only put the concept somewhere new, and those that also change it (its size).
        context_only = torch.tensor([set(wanted) <= set(CONTEXT_ATTRIBUTES) for wanted in named])
        for key, rows in (("recognition_context_only", context_only), ("recognition_concept_changed", ~context_only)):
            if rows.any():
                scores[key] = recognition_rate(concept_images[rows], judge, evaluation.drawn)
    if grid is not None:
        save_grid(concept_images, grid, columns=evaluation.seeds_per_prompt)
    return scores


def plain_samples(sample: Sampler, evaluation: EvaluationSet) -> torch.Tensor:
    """A model's samples of the plain prompts, [B, 3, 32, 32] in [-1, 1]."""
    prompts, _, seeds = evaluation.plain()
    return comfy_to_world(sample(prompts, seeds))


# ----------------------------------------------------------------------------------------------------
# The concept yardstick

WORLD_VIEWS = 24  # rendered views of every concept of the world, for `world_space`
WHITENING_FLOOR = 0.1  # added to the within-concept variances, as a fraction of their mean
LAYOUT_CELLS = 4  # the colour layout is the object, cropped to its extent, at this many cells a side


_SPACES: dict[int, tuple] = {}


def object_on_black(images: torch.Tensor) -> torch.Tensor:
    """The object of each image on the world's black, its background taken away ([B, 3, H, W] in [-1, 1]):
    the concept is the object, and where the prompt puts it is prompt fidelity's question."""
    coverage = world.object_coverage(images)
    black = torch.tensor(world.BACKGROUNDS["black"]).view(1, 3, 1, 1) * 2 - 1
    return images * coverage[:, None] + black * (1 - coverage[:, None])


def colour_layout(images: torch.Tensor) -> torch.Tensor:
    """[B, 3 * LAYOUT_CELLS**2]: each object (`object_on_black`) cropped to its extent and averaged down to
    `LAYOUT_CELLS` x `LAYOUT_CELLS` colours: where on the object each colour is, at any place and size (a
    red top over a blue bottom, a white middle). All -1 where there is no object."""
    objects, masks = object_on_black(images), world.object_coverage(images) >= 0.5
    layouts = []
    for image, mask in zip(objects, masks):
        rows, columns = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        if len(rows) == 0:
            layouts.append(-torch.ones(3 * LAYOUT_CELLS**2))
            continue
        crop = image[:, rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
        layouts.append(F.adaptive_avg_pool2d(crop[None], LAYOUT_CELLS).flatten())
    return torch.stack(layouts)


def world_concepts() -> list[dict]:
    """Every concept the world draws: each shape (novel ones too) in each colour, and with each look in
    each colour over the next colour of the palette."""
    colors = list(world.COLORS)
    plain = [dict(shape=shape, color=color) for shape in world.ALL_SHAPES for color in colors]
    looks = [dict(shape=shape, color=color, color2=colors[(index + 1) % len(colors)], look=look)
             for shape in world.ALL_SHAPES for look in world.LOOKS for index, color in enumerate(colors)]
    return plain + looks


def _centre_and_whiten(groups: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(origin, whitening) of feature groups [N, D], one per concept: the mean of them all, and the inverse
    square root of the covariance within a concept (floored)."""
    within = sum(torch.cov(group.T) for group in groups) / len(groups)
    values, vectors = torch.linalg.eigh(within)
    whitening = vectors @ torch.diag((values.clamp(min=0) + WHITENING_FLOOR * values.mean()).rsqrt()) @ vectors.T
    return torch.cat(groups).mean(dim=0), whitening


@torch.no_grad()
def world_space(judge: Judge) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((origin, whitening) of the judge's embedding of objects, the same of their `colour_layout`).

    From `WORLD_VIEWS` noisy renders of every concept of the world (`world_concepts`), at random places,
    sizes and backgrounds: each origin is the mean, and each whitening divides out the spread WITHIN a
    concept (place, size, noise), so that what tells concepts apart (shape, colours, look) counts.
    """
    cached = _SPACES.get(id(judge))
    if cached is None or cached[0] is not judge:
        generator = torch.Generator().manual_seed(4321)
        embeddings, layouts = [], []
        for concept in world_concepts():
            images = torch.stack([world.render(dict(world.sample_attributes(generator), **concept))
                                  for _ in range(WORLD_VIEWS)])
            images = (images + 0.08 * torch.randn(images.shape, generator=generator)).clamp(-1, 1)
            embeddings.append(judge.embedding(object_on_black(images)))
            layouts.append(colour_layout(images))
        cached = _SPACES[id(judge)] = (judge, _centre_and_whiten(embeddings), _centre_and_whiten(layouts))
    return cached[1], cached[2]


@torch.no_grad()
def concept_embedding(judge: Judge, images: torch.Tensor) -> torch.Tensor:
    """[B, D] unit vectors: the judge's embedding of the objects (`object_on_black`) and their
    `colour_layout`, each in `world_space` (from the world's mean object, whitened by the spread within a
    concept) and of length 1/sqrt(2): a cosine between two is the mean of the judge's and the layout's.
    The judge knows shapes and single colours; the layout says where each colour is on the object."""
    (judge_origin, judge_whitening), (layout_origin, layout_whitening) = world_space(judge)
    parts = ((judge.embedding(object_on_black(images)) - judge_origin) @ judge_whitening,
             (colour_layout(images) - layout_origin) @ layout_whitening)
    return torch.cat([F.normalize(part, dim=1) for part in parts], dim=1) / 2**0.5


@torch.no_grad()
def concept_score(judge: Judge, images: torch.Tensor, references: torch.Tensor) -> float:
    """Mean cosine similarity between each image's `concept_embedding` and the references' mean one:
    about 0 for objects that share only what all world objects share, at most 1."""
    prototype = F.normalize(concept_embedding(judge, references).mean(dim=0), dim=0)
    return (F.normalize(concept_embedding(judge, images), dim=1) @ prototype).mean().item()


def calibrate(score: float, untouched: float, own: float) -> float:
    """`score` on the scale where the untouched model's samples are 0 and the concept's own images 1."""
    if own - untouched < 1e-6:
        return float("nan")  # the untouched model already draws the concept: no scale to measure on
    return (score - untouched) / (own - untouched)


def held_out_images(evaluation: EvaluationSet, seed: int = 99) -> torch.Tensor:
    """The drawable concept as every concept prompt asks for it (its background and size where the prompt
    names them, else its own background and either size), at random places: [B, 3, 32, 32] in [-1, 1]."""
    if evaluation.drawn is None:
        raise ValueError("the concept is not drawn by the world; its held-out images are its own photos")
    generator = torch.Generator().manual_seed(seed)
    images = []
    for index, (_, named) in enumerate(evaluation.concept_prompts):
        for draw in range(evaluation.seeds_per_prompt):
            attributes = {**evaluation.drawn, "size": ("small", "big")[(index + draw) % 2], **named}
            margin = world.SIZES[attributes["size"]] + 1
            x, y = (margin + torch.rand(2, generator=generator) * (world.IMAGE_SIZE - 2 * margin)).tolist()
            images.append(world.render(dict(attributes, x=x, y=y)))
    return torch.stack(images)


def own_score(judge: Judge, references: torch.Tensor, evaluation: EvaluationSet) -> float:
    """The score of the concept's own held-out images, the 1 of `calibrate`: rendered as the prompts ask
    when the world draws the concept, else each reference against the others (leave one out)."""
    if evaluation.drawn is not None:
        return concept_score(judge, held_out_images(evaluation), references)
    if len(references) < 2:
        raise ValueError("a concept needs at least two images to hold one out")
    return sum(concept_score(judge, references[index : index + 1],
                             torch.cat([references[:index], references[index + 1 :]]))
               for index in range(len(references))) / len(references)


def cross_concept_matrix(judge: Judge, samples: dict[str, torch.Tensor], references: dict[str, torch.Tensor],
                         untouched: torch.Tensor | None = None,
                         own: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """{sampled concept: {reference concept: score}}: does each concept's samples score highest against
    their own concept's images? With `untouched` samples and each concept's `own` score, calibrated."""
    matrix = {}
    for row, images in samples.items():
        matrix[row] = {}
        for column, refs in references.items():
            score = concept_score(judge, images, refs)
            if untouched is not None and own is not None:
                score = calibrate(score, concept_score(judge, untouched, refs), own[column])
            matrix[row][column] = score
    return matrix


def matrix_table(matrix: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per sampled concept, one column per reference concept, the row's best in bold, and
    "-" where a row lacks a column (merged runs of different concepts)."""
    columns = list(dict.fromkeys(column for scores in matrix.values() for column in scores))
    lines = ["| samples of \\ scored against | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for row, scores in matrix.items():
        best = max(scores.values())
        cells = [("-" if column not in scores else f"**{scores[column]:.3f}**" if scores[column] == best
                  else f"{scores[column]:.3f}") for column in columns]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_grid(images: torch.Tensor, path: str | Path, columns: int, scale: int = 4) -> Path:
    """[B, 3, H, W] images in [-1, 1] as one PNG, `columns` to a row, each pixel `scale` px wide."""
    rows = -(-len(images) // columns)
    padded = torch.cat([images, images.new_ones(rows * columns - len(images), *images.shape[1:])])
    grid = padded.view(rows, columns, *images.shape[1:]).permute(0, 3, 1, 4, 2).flatten(0, 1).flatten(1, 2)
    array = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    image = Image.fromarray(array).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def silhouette_similarity(images: torch.Tensor, references: torch.Tensor) -> float:
    """Mean over images of the best IoU between its silhouette and a reference's (both normalised)."""
    candidates, targets = _silhouettes(images), _silhouettes(references)
    intersection = torch.einsum("ahw,bhw->ab", candidates, targets)
    union = candidates.sum((1, 2))[:, None] + targets.sum((1, 2))[None, :] - intersection
    return (intersection / union.clamp(min=1e-6)).max(dim=1).values.mean().item()


def _silhouettes(images: torch.Tensor) -> torch.Tensor:
    """[B, SILHOUETTE_BOX, SILHOUETTE_BOX] masks: each object cropped to its extent and resized (all zero if none)."""
    masks = world.object_coverage(images) >= 0.5
    boxes = []
    for mask in masks:
        rows, columns = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        if len(rows) == 0:
            boxes.append(torch.zeros(SILHOUETTE_BOX, SILHOUETTE_BOX))
            continue
        crop = mask[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1].float()
        boxes.append(F.interpolate(crop[None, None], size=(SILHOUETTE_BOX, SILHOUETTE_BOX), mode="area")[0, 0])
    return (torch.stack(boxes) >= 0.5).float()


def samplers(teacher: DiffusionModel, student: DiffusionModel, text: TextConditioner, guidance: float,
             personalization: Personalization | None = None,
             teacher_steps: int = TEACHER_SAMPLE_STEPS) -> dict[str, Sampler]:
    """The one-step student's and the DDIM + CFG teacher's samplers, personalized if one is given."""
    def personalized(role: str, draw: Callable[[list[str], list[int]], torch.Tensor]) -> Sampler:
        def sample(prompts: list[str], seeds: list[int]) -> torch.Tensor:
            if personalization is None:
                return draw(prompts, seeds)
            with personalization.applied(text, **{role: teacher if role == "teacher" else student}):
                return draw(prompts, seeds)
        return sample

    return {
        "student": personalized("student", lambda prompts, seeds: generate_student(student, text, prompts, seeds)),
        "teacher": personalized("teacher", lambda prompts, seeds: generate_teacher(
            teacher, text, prompts, seeds, steps=teacher_steps, guidance_scale=guidance)),
    }
