"""A procedural text-to-image world at 32x32: coloured shapes on coloured backgrounds.

Every image is drawn by code from known attributes (shape, colour, size, background, position), so a
generated image can be checked against its prompt without any pretrained network. The bundled tiny
teacher, student and judge are trained on this world only. The shapes of `NOVEL_SHAPES` are never
in the models' training. The judge, the yardstick, knows them (`ALL_SHAPES`), so that a concept's samples
can be recognised. A concept may also be a shape the models know with its own look (`LOOKS`): part of it
in a second colour, as "my circle" is red with a blue band across it; `recognise_concept` reads both
from the pixels.

Every attribute is measured from pixels (`measure`): background, colour and size directly, shape by
matching the object's coverage against every training shape drawn at both sizes and every position
(`match_shape`). The small trained judge (`judge.py`) adds a second opinion on shape and the image
embedding the fidelity metrics need.
Captions must fit the tiny tokenizer's 16 tokens (14 word pieces between BOS and EOS), which is why
the words are short and the longer templates are used only for captions that fit.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

TINY_ASSETS = Path(__file__).parents[1] / "assets" / "tiny"  # echodistill_core/assets/tiny
TEACHER_FOLDER = TINY_ASSETS / "teacher"  # trained by tools/train_tiny_teacher.py
STUDENT_FOLDER = TINY_ASSETS / "student"  # distilled by tools/distill_tiny_student.py
LATENT_TEACHER_FOLDER = TINY_ASSETS / "latent-teacher"  # on a tiny VAE's latents: train_tiny_teacher.py --vae
LATENT_STUDENT_FOLDER = TINY_ASSETS / "latent-student"  # epsilon, one step from the last timestep, as SD-Turbo
IMAGE_NETWORK_FOLDER = TINY_ASSETS / "image-network"  # the pairs' DINO: tools/train_tiny_image_network.py
PAIRS = {"pixel": (TEACHER_FOLDER, STUDENT_FOLDER), "latent": (LATENT_TEACHER_FOLDER, LATENT_STUDENT_FOLDER)}

IMAGE_SIZE = 32
SUPERSAMPLE = 4  # shapes are drawn on a 4x finer grid and averaged: anti-aliased edges

SHAPES = ("circle", "square", "triangle", "cross", "ring")
NOVEL_SHAPES = ("star", "heart")
ALL_SHAPES = SHAPES + NOVEL_SHAPES  # every shape the renderer draws: the judge's vocabulary
COLORS = {  # object colours, RGB in [0, 1]: bright and far from every background
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.15),
    "blue": (0.15, 0.30, 1.00),
    "yellow": (0.95, 0.90, 0.10),
    "white": (0.95, 0.95, 0.95),
    "pink": (1.00, 0.45, 0.75),
}
BACKGROUNDS = {  # background colours: dark or muted
    "black": (0.05, 0.05, 0.05),
    "gray": (0.45, 0.45, 0.45),
    "brown": (0.40, 0.22, 0.08),
    "teal": (0.00, 0.40, 0.40),
}
LOOKS = ("halves", "dot", "band")  # an object's look: where its second colour (`color2`) goes
LOOK_WORDS = {"halves": "lower", "dot": "dot", "band": "band"}  # how a caption names a look: "red circle with blue lower"
SIZES = {"small": 5.0, "big": 10.0}  # half-width of the shape in pixels
SIZE_THRESHOLD = 15  # measured extent (pixels) between the two sizes
ATTRIBUTES = {"shape": SHAPES, "color": tuple(COLORS), "size": tuple(SIZES), "background": tuple(BACKGROUNDS)}

TEMPLATES = (  # the first always fits in 16 tokens and is the evaluation template
    "a {size} {color} {shape} on {background}",
    "{size} {color} {shape} on {background}",
    "a photo of a {size} {color} {shape} on {background}",
    "a {size} {color} {shape} on a {background} background",
)
LOOK_TEMPLATES = (  # for a two-coloured object; the last always fits in 16 tokens
    "a {size} {color} {shape} with {color2} {look_word} on {background}",
    "{size} {color} {shape} with {color2} {look_word} on {background}",
    "{color} {shape} with {color2} {look_word} on {background}",
    "{color} {shape} {color2} {look_word} on {background}",
)


# ----------------------------------------------------------------------------------------------------
# Attributes and captions

def sample_attributes(generator: torch.Generator, shapes: tuple[str, ...] = SHAPES, looks: float = 0.0) -> dict:
    """Random attributes: a shape of `shapes` (the training vocabulary), its colour, size, background and centre;
    with probability `looks`, also a look (`LOOKS`) in a second colour. With `looks` 0 the draws are those of
    a world without looks, so evaluation sets stay the same."""
    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    attributes = {name: pick(shapes if name == "shape" else options) for name, options in ATTRIBUTES.items()}
    margin = SIZES[attributes["size"]] + 1
    x, y = (margin + torch.rand(2, generator=generator) * (IMAGE_SIZE - 2 * margin)).tolist()
    attributes.update(x=x, y=y)
    if looks > 0 and float(torch.rand(1, generator=generator)) < looks:
        others = tuple(colour for colour in COLORS if colour != attributes["color"])
        attributes.update(look=pick(LOOKS), color2=pick(others))
    return attributes


def evaluation_set(count: int, seed: int = 1234) -> tuple[list[str], list[dict]]:
    """`count` fixed (prompts, attributes) for measuring how well a model follows prompts."""
    generator = torch.Generator().manual_seed(seed)
    attributes = [sample_attributes(generator) for _ in range(count)]
    return [caption(item) for item in attributes], attributes


def caption(attributes: dict, template: int = 0) -> str:
    """The caption of `attributes` by one of the templates: `LOOK_TEMPLATES` for a two-coloured object."""
    if attributes.get("look"):
        return LOOK_TEMPLATES[template].format(look_word=LOOK_WORDS[attributes["look"]], **attributes)
    return TEMPLATES[template].format(**attributes)


def random_caption(attributes: dict, tokenizer, generator: torch.Generator) -> str:
    """A caption from a random template among those that fit the tokenizer without truncation."""
    templates = LOOK_TEMPLATES if attributes.get("look") else TEMPLATES
    fitting = [text for text in (caption(attributes, index) for index in range(len(templates)))
               if len(tokenizer.tokenize(text)) + 2 <= tokenizer.model_max_length]
    return fitting[int(torch.randint(len(fitting), (1,), generator=generator))]


# ----------------------------------------------------------------------------------------------------
# Rendering

def _shape_mask(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-test on coordinates normalised by the half-width (u to the right, v downwards)."""
    radius = (u**2 + v**2).sqrt()
    if shape == "circle":
        return radius <= 1
    if shape == "square":
        return torch.maximum(u.abs(), v.abs()) <= 0.85
    if shape == "triangle":  # apex up
        return (v <= 0.85) & (u.abs() <= (v + 1) / 1.85)
    if shape == "cross":  # an upright plus sign
        return ((u.abs() <= 0.3) & (v.abs() <= 1)) | ((v.abs() <= 0.3) & (u.abs() <= 1))
    if shape == "ring":
        return (radius <= 1) & (radius >= 0.55)
    if shape == "star":  # five points, one up
        sector = 2 * math.pi / 5
        angle = torch.remainder(torch.atan2(u, -v) + sector / 2, sector) - sector / 2
        px, py = radius * torch.cos(angle), radius * torch.sin(angle).abs()
        inner = 0.45
        qx, qy = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
        return (qx - 1) * py - qy * (px - 1) >= 0
    if shape == "heart":
        x, y = 1.15 * u, -1.15 * v + 0.15
        return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES + NOVEL_SHAPES}")


def _look_mask(look: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Where a look puts the second colour, on the shape's normalised coordinates. Every look is symmetric
    left-right: the training augmentation flips images, and a flipped concept must stay the same concept."""
    if look == "halves":  # the lower half
        return v > 0
    if look == "dot":  # a dot in the middle
        return u**2 + v**2 <= 0.42**2
    if look == "band":  # a horizontal band across the middle
        return v.abs() <= 0.3
    raise ValueError(f"unknown look {look!r}; known: {', '.join(LOOKS)}")


def _regions(attributes: dict) -> list[torch.Tensor]:
    """Per colour of the object (`color`, then `color2` where a `look` puts it): [32, 32] share of each
    pixel it covers."""
    size = SIZES[attributes["size"]]
    x, y = attributes.get("x", IMAGE_SIZE / 2), attributes.get("y", IMAGE_SIZE / 2)
    fine = (torch.arange(IMAGE_SIZE * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    v, u = torch.meshgrid((fine - y) / size, (fine - x) / size, indexing="ij")
    inside = _shape_mask(attributes["shape"], u, v)
    masks = [inside]
    if attributes.get("look"):
        second = inside & _look_mask(attributes["look"], u, v)
        masks = [inside & ~second, second]
    return [F.avg_pool2d(mask.float()[None, None], SUPERSAMPLE)[0, 0] for mask in masks]


def render(attributes: dict) -> torch.Tensor:
    """[3, 32, 32] image in [-1, 1] of `attributes` (any shape, including `NOVEL_SHAPES`).

    Missing x/y centre the shape; colours may be names or RGB triples in [0, 1]. With a `look` (of
    `LOOKS`), part of the shape is drawn in `color2`: "my circle", a circle with red and blue halves.
    """
    colors = [attributes["color"], attributes.get("color2")]
    image = _rgb(attributes["background"], BACKGROUNDS)
    for alpha, color in zip(_regions(attributes), colors):
        image = image * (1 - alpha) + _rgb(color, COLORS) * alpha
    return image * 2 - 1


def _rgb(value, table: dict) -> torch.Tensor:
    rgb = table[value] if isinstance(value, str) else value
    return torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1)


def sample(generator: torch.Generator) -> tuple[torch.Tensor, str, dict]:
    """One random (image [3, 32, 32] in [-1, 1], evaluation-template caption, attributes)."""
    attributes = sample_attributes(generator)
    return render(attributes), caption(attributes), attributes


def sample_batch(count: int, generator: torch.Generator, shapes: tuple[str, ...] = SHAPES,
                 looks: float = 0.0) -> tuple[torch.Tensor, list[dict]]:
    """[count, 3, 32, 32] images and their attributes (shapes drawn from `shapes`, a share `looks` two-coloured)."""
    attributes = [sample_attributes(generator, shapes, looks) for _ in range(count)]
    return torch.stack([render(item) for item in attributes]), attributes


# ----------------------------------------------------------------------------------------------------
# Measuring attributes from pixels

def _nearest(rgb: torch.Tensor, table: dict) -> list[str]:
    """Name of the nearest palette colour for each row of [B, 3] colours in [0, 1]."""
    names = list(table)
    palette = torch.tensor([table[name] for name in names])
    return [names[index] for index in torch.cdist(rgb, palette).argmin(dim=1).tolist()]


def measure(images: torch.Tensor) -> list[dict]:
    """Background, colour, size and shape read from the pixels of [B, 3, 32, 32] images in [-1, 1].

    Background and colour as `_object_colours` finds them. Size: the extent, in pixels, of the rows
    or columns holding at least two object pixels (coverage over one half). Shape: `match_shape` on
    the object's coverage, "unclear" when no training shape fits.
    """
    background, color, coverage = _object_colours(images)
    extent_coverage = object_coverage(images)
    results = []
    for index in range(len(images)):
        mask = extent_coverage[index] >= 0.5
        extent = max(int((mask.sum(dim=0) >= 2).sum()), int((mask.sum(dim=1) >= 2).sum()))
        results.append(dict(
            background=_nearest(background[index : index + 1], BACKGROUNDS)[0],
            color=_nearest(color[index : index + 1], COLORS)[0],
            size="small" if extent < SIZE_THRESHOLD else "big",
            shape=match_shape(coverage[index]),
        ))
    return results


def object_coverage(images: torch.Tensor) -> torch.Tensor:
    """[B, 32, 32] in [0, 1]: how much of each pixel is the object rather than the background, whatever its
    colours: the larger of the coverage along the object's main colour (`_object_colours`) and the pixel's
    RGB distance from the background, which finds a look's second colour too (`OBJECT_DISTANCE`)."""
    background, _, coverage = _object_colours(images)
    pixels = (images.float().clamp(-1, 1) + 1) / 2
    distance = (pixels - background[:, :, None, None]).norm(dim=1)
    low, high = OBJECT_DISTANCE
    return torch.maximum(coverage, ((distance - low) / (high - low)).clamp(0, 1))


# RGB distances from the background (0..1 units) that count as no object and as all object: every object
# colour is at least 0.44 from every background (green on teal), a generated image's noise about 0.1.
OBJECT_DISTANCE = (0.12, 0.36)


def _object_colours(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Background [B, 3], object colour [B, 3] (both RGB in [0, 1]) and the object's coverage [B, H, W].

    Background: median of the one-pixel border. Colour: median of the pixels farthest from the
    background (over 60 % of the largest distance). Coverage: each pixel's position between the two
    colours, projected on the line that joins them.
    """
    pixels = ((images.float().clamp(-1, 1) + 1) / 2).flatten(2)  # [B, 3, H*W]
    side = images.shape[-1]
    border = torch.zeros(side, side, dtype=torch.bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    background = pixels[:, :, border.flatten()].median(dim=2).values  # [B, 3]
    offset = pixels - background[:, :, None]
    distance = offset.norm(dim=1)  # [B, H*W]
    color = torch.stack([
        pixels[index][:, distance[index] >= 0.6 * distance[index].max()].median(dim=1).values
        for index in range(len(images))
    ])
    contrast = color - background
    coverage = (offset * contrast[:, :, None]).sum(1) / contrast.square().sum(1, keepdim=True).clamp(min=1e-6)
    return background, color, coverage.clamp(0, 1).view(-1, side, side)


SHAPE_FIT = 0.35  # the largest unexplained fraction of the object's coverage that still names a shape


def match_shape(coverage: torch.Tensor, shapes: tuple[str, ...] = SHAPES) -> str:
    """The shape of `shapes` whose drawing best explains a [32, 32] coverage map (1 = object, 0 = background),
    "unclear" when none does (`fit_shape`)."""
    fit = fit_shape(coverage, shapes)
    return fit["shape"] if fit else "unclear"


def fit_shape(coverage: torch.Tensor, shapes: tuple[str, ...] = SHAPES) -> dict | None:
    """The shape, size and centre (x, y) whose drawing best explains a [32, 32] coverage map, or None.

    Every shape of `shapes` (the training vocabulary unless told) at both sizes and every whole-pixel
    position is a template; the best one (least squared difference) is the answer if it leaves at most
    `SHAPE_FIT` of the coverage unexplained (not: a blob, two objects, an empty image).
    """
    templates, placements = _shape_templates(tuple(shapes))
    flat = coverage.flatten().float()
    errors = (templates - flat).square().sum(dim=1)
    best = int(errors.argmin())
    mass = flat.square().sum().clamp(min=1e-6)
    return dict(placements[best]) if errors[best] / mass <= SHAPE_FIT else None


@lru_cache(maxsize=2)
def _shape_templates(shapes: tuple[str, ...] = SHAPES) -> tuple[torch.Tensor, list[dict]]:
    """[T, 32*32] coverage of every shape of `shapes`, size and whole-pixel position, and each one's
    shape, size and centre."""
    templates, placements = [], []
    for shape in shapes:
        for size, half in SIZES.items():
            fine = (torch.arange(IMAGE_SIZE * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
            v, u = torch.meshgrid((fine - IMAGE_SIZE / 2) / half, (fine - IMAGE_SIZE / 2) / half, indexing="ij")
            centred = F.avg_pool2d(_shape_mask(shape, u, v).float()[None, None], SUPERSAMPLE)[0, 0]
            reach = int(IMAGE_SIZE / 2 - half - 1)
            for dy in range(-reach, reach + 1):
                for dx in range(-reach, reach + 1):
                    templates.append(torch.roll(centred, (dy, dx), dims=(0, 1)).flatten())
                    placements.append((("shape", shape), ("size", size),
                                       ("x", IMAGE_SIZE / 2 + dx), ("y", IMAGE_SIZE / 2 + dy)))
    return torch.stack(templates), placements


LOOK_SHARE = 0.75  # a pixel is read for a colour of the concept where that colour covers this much of it
LOOK_AGREEMENT = 0.8  # the share of those pixels whose nearest palette colour must be that colour


def recognise_concept(images: torch.Tensor, concept: dict) -> list[dict]:
    """Is each of [B, 3, 32, 32] images (in [-1, 1]) the concept, read from the pixels alone?

    "shape": the shape, among every shape the world draws, that best explains the object's coverage at
    any place and size (`fit_shape`), or "unclear". "look": the shape is the concept's, and where the
    concept, drawn at the fitted place and size, has each of its colours (`color`, and `color2` where its
    `look` puts it), at least `LOOK_AGREEMENT` of the image's pixels are nearest that colour in the
    palette. A red circle is not "my circle" with red and blue halves, nor is one with a white dot.
    """
    coverage = object_coverage(images)
    pixels = (images.float().clamp(-1, 1) + 1) / 2
    results = []
    for index in range(len(images)):
        fit = fit_shape(coverage[index], ALL_SHAPES)
        if fit is None or fit["shape"] != concept["shape"]:
            results.append(dict(shape=fit["shape"] if fit else "unclear", look=False))
            continue
        colours = [concept["color"], concept.get("color2")]
        look = True
        for share, colour in zip(_regions(dict(concept, **fit)), colours):
            where = share >= LOOK_SHARE
            named = _nearest(pixels[index][:, where].T, COLORS)
            look = look and named.count(colour) >= LOOK_AGREEMENT * len(named)
        results.append(dict(shape=fit["shape"], look=look))
    return results
