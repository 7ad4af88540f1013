"""The judge: a small CNN trained on the procedural world, and the metrics built on it.

No pretrained image network can be had offline, so the tiny world brings its own. The judge
classifies an image's shape, colour, size and background, and its penultimate layer is an image
embedding for concept fidelity (cosine similarity, like CLIP-I/DINO scores) and a Fréchet distance
(like FID). It is trained by `tools/train_judge.py` on world images only, and knows every shape the world
draws, `NOVEL_SHAPES` included (as DINO has seen dogs): a yardstick that cannot tell a heart from a circle
cannot say whether a heart was learned. The generative models never see the novel shapes; prompt
following asks the judge only among the training shapes (`measure_attributes`), and `recognise` among all.

Prompt following is scored per attribute from the pixels (`world.measure`, no trained network), and
a shape counts only when the judge agrees with the pixel template match: neither alone gives a
blob credit for a shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from . import world

JUDGE_FOLDER = world.TINY_ASSETS / "judge"


class Judge(nn.Module):
    """Four conv stages (32 -> 4 px), global average pooling, an embedding and one head per attribute."""

    def __init__(self, width: int = 32, embed_dim: int = 64, classes: dict | None = None):
        super().__init__()
        self.classes = {name: list(values) for name, values in (classes or world.ATTRIBUTES).items()}
        self.config = dict(width=width, embed_dim=embed_dim, classes=self.classes)
        layers, channels = [], 3
        for index, out in enumerate((width, width, 2 * width, 2 * width)):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU()]
            if index > 0:
                layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers)
        self.embed = nn.Linear(channels, embed_dim)
        self.heads = nn.ModuleDict({name: nn.Linear(embed_dim, len(values)) for name, values in self.classes.items()})

    def embedding(self, images: torch.Tensor) -> torch.Tensor:
        """[B, embed_dim] features of [B, 3, 32, 32] images in [-1, 1] (the penultimate layer)."""
        return F.relu(self.embed(self.features(images).mean(dim=(2, 3))))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute."""
        embedding = self.embedding(images)
        return {name: head(embedding) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, shapes: tuple[str, ...] | None = None) -> list[dict]:
        """The most likely value of every attribute, per image; the shape among `shapes` if given
        (those of them the judge knows), else among all it knows."""
        logits = self(images)
        if shapes is not None:
            allowed = torch.tensor([shape in shapes for shape in self.classes["shape"]])
            logits["shape"] = logits["shape"].masked_fill(~allowed, float("-inf"))
        indices = {name: values.argmax(dim=1).tolist() for name, values in logits.items()}
        return [{name: self.classes[name][indices[name][row]] for name in logits} for row in range(len(images))]


def save_judge(judge: Judge, folder: str | Path = JUDGE_FOLDER) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in judge.state_dict().items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(judge.config, indent=2) + "\n")


def load_judge(folder: str | Path = JUDGE_FOLDER) -> Judge:
    """The bundled (or a given) judge, frozen, in eval mode on the CPU."""
    folder = Path(folder)
    judge = Judge(**json.loads((folder / "config.json").read_text()))
    judge.load_state_dict(load_file(folder / "model.safetensors"))
    return judge.eval().requires_grad_(False)


def comfy_to_world(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI images ([B, H, W, 3] in [0, 1], as the samplers return them) -> [B, 3, H, W] in [-1, 1]."""
    return images.permute(0, 3, 1, 2) * 2 - 1


def measure_attributes(images: torch.Tensor, judge: Judge) -> list[dict]:
    """Every attribute from the pixels; the shape is "unclear" unless the judge names the same one.

    Images [B, 3, 32, 32] in [-1, 1].
    """
    opinions = judge.predict(images, shapes=world.SHAPES)  # prompts name training shapes only
    return [dict(pixels, shape=pixels["shape"] if pixels["shape"] == opinion["shape"] else "unclear")
            for pixels, opinion in zip(world.measure(images), opinions)]


def recognise(images: torch.Tensor, judge: Judge) -> list[dict]:
    """Shape and colour of each image among EVERY shape the judge knows (the novel ones too).

    The shape is "unclear" unless the judge and the pixel template match (`world.match_shape` over the
    judge's shapes) name the same one; the colour is read from the pixels. Images [B, 3, 32, 32] in [-1, 1].
    """
    shapes = tuple(judge.classes["shape"])
    opinions = judge.predict(images)
    _, colors, coverage = world._object_colours(images)
    results = []
    for index, opinion in enumerate(opinions):
        pixels = world.match_shape(coverage[index], shapes)
        results.append(dict(shape=pixels if pixels == opinion["shape"] else "unclear",
                            color=world._nearest(colors[index : index + 1], world.COLORS)[0]))
    return results


def recognition_rate(images: torch.Tensor, judge: Judge, concept: dict,
                     keys: tuple[str, ...] = ("shape", "color")) -> float:
    """Share of images recognised as the concept: its shape among all shapes, and its colour (or `keys`).

    A concept with a look (`world.LOOKS`: a second colour in a pattern of a known shape) is read from the
    pixels (`world.recognise_concept`): the judge never saw two-coloured objects. Its colour is its look:
    each of its colours where the look puts it.
    """
    if concept.get("look"):
        recognised = world.recognise_concept(images, concept)
        return sum(item["shape"] == concept["shape"] and ("color" not in keys or item["look"])
                   for item in recognised) / len(recognised)
    recognised = recognise(images, judge)
    return sum(all(item[key] == concept[key] for key in keys) for item in recognised) / len(recognised)


def attribute_accuracy(images: torch.Tensor, attributes: list[dict], judge: Judge) -> dict[str, float]:
    """Fraction of images whose measured shape, colour, size and background match their prompt."""
    measured = measure_attributes(images, judge)
    return {name: sum(m[name] == a[name] for m, a in zip(measured, attributes)) / len(attributes)
            for name in world.ATTRIBUTES}


@torch.no_grad()
def concept_fidelity(judge: Judge, images: torch.Tensor, references: torch.Tensor) -> float:
    """Mean cosine similarity, clamped at 0, between every image and every reference (1 = identical)."""
    a = F.normalize(judge.embedding(images), dim=1)
    b = F.normalize(judge.embedding(references), dim=1)
    return (a @ b.T).clamp(min=0).mean().item()


@torch.no_grad()
def frechet_distance(judge: Judge, images: torch.Tensor, references: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to the judge embeddings of two image sets (0 = same)."""
    a, b = judge.embedding(images).double(), judge.embedding(references).double()
    mean_a, mean_b = a.mean(dim=0), b.mean(dim=0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm(cov_a)
    cross = _sqrtm(root_a @ cov_b @ root_a).trace()
    return ((mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross).clamp(min=0).item()


def _sqrtm(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix."""
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
