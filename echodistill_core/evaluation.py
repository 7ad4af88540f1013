"""How well a personalization worked, measured in the tiny world (the demo's report and bench/quality.py).

Each model is judged by samples it draws for fixed prompts and seeds:
- **concept_fidelity**: mean cosine similarity of judge embeddings between the samples of concept
  prompts and the reference images (the role DINO plays in the paper), in [0, 1];
- **concept_silhouette**: the same question with no network: IoU of the object's silhouette, centred
  and scaled to a common box, against the closest reference's;
- **prompt_fidelity**: fraction of concept-prompt samples whose background (and size, where the
  prompt names one) matches the prompt, read from pixels;
- **kept_accuracy**: attribute accuracy on plain world prompts, with no concept in them;
- **kept_fd**: Fréchet distance of judge embeddings between those samples and the untouched model's
  for the same prompts and seeds (0 = personalization changed nothing else).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import world
from .judge import Judge, attribute_accuracy, comfy_to_world, concept_fidelity, frechet_distance
from .models import DiffusionModel, TextConditioner
from .personalization import Personalization
from .sampling import generate_student, generate_teacher

Sampler = Callable[[list[str], list[int]], torch.Tensor]  # prompts, seeds -> ComfyUI images [B, H, W, 3]

CONCEPT_PROMPTS = (  # (template for the subject, the attributes it names)
    ("a {} on teal", {"background": "teal"}),
    ("a {} on gray", {"background": "gray"}),
    ("a {} on brown", {"background": "brown"}),
    ("a small {} on black", {"size": "small", "background": "black"}),
    ("a big {} on teal", {"size": "big", "background": "teal"}),
    ("a big {} on gray", {"size": "big", "background": "gray"}),
)
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
    """The prompts and seeds every model is judged on."""
    subject: str  # "<token> <class word>"
    seeds_per_prompt: int = 8
    plain_count: int = 64
    concept_prompts: tuple[tuple[str, dict], ...] = CONCEPT_PROMPTS

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


def evaluate(sample: Sampler, references: torch.Tensor, evaluation: EvaluationSet, judge: Judge,
             untouched_plain: torch.Tensor) -> dict[str, float]:
    """The five metrics of a model given by `sample`; `references` and `untouched_plain` are
    [B, 3, 32, 32] in [-1, 1] (the concept photos, and the unpersonalized model's plain samples)."""
    prompts, named, seeds = evaluation.concept()
    concept_images = comfy_to_world(sample(prompts, seeds))
    measured = world.measure(concept_images)
    plain_prompts, plain_attributes, plain_seeds = evaluation.plain()
    plain_images = comfy_to_world(sample(plain_prompts, plain_seeds))
    kept = attribute_accuracy(plain_images, plain_attributes, judge)
    return {
        "concept_fidelity": concept_fidelity(judge, concept_images, references),
        "concept_silhouette": silhouette_similarity(concept_images, references),
        "prompt_fidelity": sum(all(m[key] == value for key, value in wanted.items())
                               for m, wanted in zip(measured, named)) / len(named),
        "kept_accuracy": sum(kept.values()) / len(kept),
        "kept_fd": frechet_distance(judge, plain_images, untouched_plain),
    }


def plain_samples(sample: Sampler, evaluation: EvaluationSet) -> torch.Tensor:
    """A model's samples of the plain prompts, [B, 3, 32, 32] in [-1, 1] (the `untouched_plain` input)."""
    prompts, _, seeds = evaluation.plain()
    return comfy_to_world(sample(prompts, seeds))


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
             personalization: Personalization | None = None, teacher_steps: int = 25) -> dict[str, Sampler]:
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
