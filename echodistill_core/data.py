"""Concept images and their prompts, with the Custom Diffusion augmentation.

Each training example is an image in [-1, 1], a validity mask (1 where the image has content, 0 on
the blank canvas around a shrunken paste) and a prompt made from a template filled with
"<token> <class word>", edited to say "very small" / "close up" when the augmentation did so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .config import AUGMENTATIONS

TRAINING_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a good photo of a {}",
)
SMALL_EDITS = ("far away ", "very small ")
LARGE_EDITS = ("zoomed in ", "close up ")
# The config's `augmentation` names as `ConceptDataset`'s augment values.
AUGMENT = dict(zip(AUGMENTATIONS, (True, "flip", False)))
# Custom Diffusion's augmentation.
FLIP_PROBABILITY = 0.5
PASTE_PROBABILITY = 2 / 3  # else enlarge and crop
PASTE_SHRINK = 3  # pasted at 1/PASTE_SHRINK .. 1 of the resolution
SMALL_EDIT_BELOW = 0.6  # a paste smaller than this fraction of the resolution gets one of SMALL_EDITS
CROP_ENLARGE = (1.2, 1.4)  # enlarged to this range of the resolution, then cropped; prompted with LARGE_EDITS
MIN_IMAGE_SIDE = 8
MAX_IMAGE_PIXELS = 64_000_000  # 64 MP: more than any camera photo needs; a larger file is refused unread
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
HIGH_DEPTH_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0, "F": 1.0}  # mode -> white


class ConceptImageError(ValueError):
    """A concept image that cannot be used; the message names it and says why."""


def read_images(folder: Path) -> list[Image.Image]:
    """Every image file in `folder`, sorted by name, upright as its camera's orientation tag says. A file
    that will not open, or holds more than MAX_IMAGE_PIXELS, is named in the error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConceptImageError(f"{folder} is not a folder of images")
    images = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            with Image.open(path) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise ConceptImageError(
                        f"{path.name} is {image.width}x{image.height} px, more than {MAX_IMAGE_PIXELS // 10**6} MP; "
                        "resize it (the training resolution is 512 px)")
                upright = ImageOps.exif_transpose(image)
                upright.filename = path.name  # names the file in to_tensor's errors
                images.append(upright)
        except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as error:
            if isinstance(error, ConceptImageError):
                raise
            raise ConceptImageError(f"{path} is not a readable image ({error}); remove or re-save it") from error
    return images


@dataclass
class ConceptBatch:
    images: torch.Tensor  # [B, 3, R, R] in [-1, 1]
    masks: torch.Tensor  # [B, 1, R, R] in {0, 1}
    prompts: list[str]
    # Per example, (image index, flipped) when it is a concept image as prepared (or its mirror image), which
    # therefore recurs and whose latents can be kept; None for a new crop or paste.
    sources: list[tuple[int, bool] | None] | None = None


def to_tensor(image, index: int = 0) -> torch.Tensor:
    """A PIL image, or a tensor [H, W, C] / [C, H, W] (float in 0..1 or uint8), as [3, H, W] in [-1, 1].

    RGBA is composited over white and grey is repeated to RGB.
    """
    if isinstance(image, Image.Image):
        tensor = _pil_to_tensor(image, _label(image, index))
    elif isinstance(image, torch.Tensor) or isinstance(image, np.ndarray):
        tensor = torch.as_tensor(image).detach().cpu()
        tensor = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
        if tensor.ndim == 2:
            tensor = tensor[None]
        if tensor.ndim != 3:
            raise ConceptImageError(f"image {index} has shape {tuple(tensor.shape)}; expected [H, W, C] or [C, H, W]")
        if tensor.shape[0] not in (1, 3, 4) and tensor.shape[-1] in (1, 3, 4):
            tensor = tensor.permute(2, 0, 1)
        if tensor.shape[0] == 4:
            rgb, alpha = tensor[:3], tensor[3:]
            tensor = rgb * alpha + (1 - alpha)
        if tensor.shape[0] == 1:
            tensor = tensor.expand(3, -1, -1)
        if tensor.shape[0] != 3:
            raise ConceptImageError(f"image {index} has {tensor.shape[0]} channels; give RGB, RGBA or grey images")
    else:
        raise ConceptImageError(f"image {index} is a {type(image).__name__}; give PIL images or tensors")
    if min(tensor.shape[1:]) < MIN_IMAGE_SIDE:
        raise ConceptImageError(
            f"{_label(image, index)} is {tensor.shape[2]}x{tensor.shape[1]} px; concept images need at least "
            f"{MIN_IMAGE_SIDE} px a side (ideally the training resolution or more)"
        )
    if not torch.isfinite(tensor).all():
        raise ConceptImageError(f"{_label(image, index)} contains NaN or infinite values")
    return tensor.clamp(0, 1) * 2 - 1


def _label(image, index: int) -> str:
    return getattr(image, "filename", "") or f"image {index}"


def _pil_to_tensor(image: Image.Image, label: str) -> torch.Tensor:
    """[3, H, W] in 0..1 from any PIL mode: transparency composited over white, 16-bit and float grey
    scaled by their own white, palette, CMYK and YCbCr converted to RGB."""
    if image.mode in HIGH_DEPTH_MODES:
        grey = np.asarray(image, dtype=np.float32) / HIGH_DEPTH_MODES[image.mode]
        return torch.from_numpy(grey).clamp(0, 1)[None].expand(3, -1, -1).contiguous()
    try:
        if image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in image.info:
            image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image.convert("RGBA"))
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (ValueError, OSError) as error:
        raise ConceptImageError(f"{label} is in the {image.mode} colour mode, which cannot be read as RGB ({error}); "
                                "re-save it as an RGB PNG or JPEG") from error
    return torch.from_numpy(array).permute(2, 0, 1)


def resize(image: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0]


def center_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to `size` and crop the centre square."""
    _, height, width = image.shape
    scale = size / min(height, width)
    new_height, new_width = max(size, round(height * scale)), max(size, round(width * scale))
    image = F.interpolate(image[None], size=(new_height, new_width), mode="bilinear", antialias=True,
                          align_corners=False)[0]
    top, left = (new_height - size) // 2, (new_width - size) // 2
    return image[:, top : top + size, left : left + size]


def _uniform_int(low: int, high: int, generator: torch.Generator) -> int:
    """An integer in [low, high], inclusive."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def random_choice(options, generator: torch.Generator):
    return options[_uniform_int(0, len(options) - 1, generator)]


def augment(image: torch.Tensor, resolution: int, generator: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The Custom Diffusion recipe: flip (FLIP_PROBABILITY); with PASTE_PROBABILITY shrink to
    1/PASTE_SHRINK..1 of the resolution and paste on a blank canvas (mask = pasted region), else enlarge
    by CROP_ENLARGE and crop. Returns the image, its mask [1, R, R] and the prompt edit."""
    if torch.rand(1, generator=generator) < FLIP_PROBABILITY:
        image = image.flip(-1)
    if torch.rand(1, generator=generator) < PASTE_PROBABILITY:
        size = _uniform_int(resolution // PASTE_SHRINK, resolution, generator)
        top, left = _uniform_int(0, resolution - size, generator), _uniform_int(0, resolution - size, generator)
        canvas, mask = torch.zeros(3, resolution, resolution), torch.zeros(1, resolution, resolution)
        canvas[:, top : top + size, left : left + size] = resize(image, size)
        mask[:, top : top + size, left : left + size] = 1
        edit = random_choice(SMALL_EDITS, generator) if size < SMALL_EDIT_BELOW * resolution else ""
        return canvas, mask, edit
    size = _uniform_int(round(CROP_ENLARGE[0] * resolution), round(CROP_ENLARGE[1] * resolution), generator)
    top, left = _uniform_int(0, size - resolution, generator), _uniform_int(0, size - resolution, generator)
    crop = resize(image, size)[:, top : top + resolution, left : left + resolution]
    return crop, torch.ones(1, resolution, resolution), random_choice(LARGE_EDITS, generator)


CAPTION_SEPARATOR = "|"  # "a <sks> dog on grass | a big <sks> dog on grass": one of these, drawn at each use


def caption_alternatives(caption: str) -> tuple[str, ...]:
    """A caption's alternatives: its parts between `CAPTION_SEPARATOR`s, stripped (one part: the caption).

    A photo captioned in several true ways is seen under each of them, so the token learns to stand among
    other words (a size before it, "a photo of" or nothing in front) and not only where one caption put it.
    Refuses an empty part."""
    alternatives = tuple(part.strip() for part in caption.split(CAPTION_SEPARATOR))
    if not all(alternatives):
        raise ConceptImageError(f"the caption {caption!r} has an empty alternative; write a caption on each side "
                                f"of every {CAPTION_SEPARATOR!r}")
    return alternatives


class ConceptDataset:
    """A handful of images of one subject, drawn as augmented (image, mask, prompt) batches."""

    def __init__(self, images, token: str, class_word: str, resolution: int, *,
                 templates: tuple[str, ...] = TRAINING_TEMPLATES, captions: list[str] | None = None,
                 augment: bool | str = True):
        images = list(images)
        if not images:
            raise ConceptImageError("no concept images were given; give 3-20 photos of the subject")
        if captions is not None:
            if len(captions) != len(images):
                raise ConceptImageError(f"got {len(captions)} captions for {len(images)} images; give one per image")
            for index, caption in enumerate(captions):
                for alternative in caption_alternatives(caption):
                    if token not in alternative:
                        raise ConceptImageError(f"caption {index} ({alternative!r}) does not mention the token {token}")
        if any("{}" not in template for template in templates):
            raise ConceptImageError("every prompt template needs a {} where the subject goes")
        self.images = [center_square(to_tensor(image, index), resolution) for index, image in enumerate(images)]
        self.token, self.class_word, self.resolution = token, class_word, resolution
        augment = AUGMENT.get(augment, augment) if isinstance(augment, str) else augment
        if augment not in (True, False, "flip"):
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)} (or True, the Custom Diffusion "
                             f"recipe, or False), not {augment!r}")
        self.templates, self.captions, self.augment = tuple(templates), captions, augment

    def __len__(self) -> int:
        return len(self.images)

    @property
    def subject(self) -> str:
        return f"{self.token} {self.class_word}".strip()

    def template_prompt(self, generator: torch.Generator, edit: str = "") -> str:
        """A random training template filled with the subject, e.g. "a photo of a <sks> dog"."""
        return random_choice(self.templates, generator).format(edit + self.subject)

    def prompt(self, index: int, edit: str, generator: torch.Generator) -> str:
        if self.captions is not None:
            alternatives = caption_alternatives(self.captions[index])
            return alternatives[0] if len(alternatives) == 1 else random_choice(alternatives, generator)
        return self.template_prompt(generator, edit)

    def caption_prompts(self) -> list[str]:
        """Every prompt the captions can give (each alternative of each caption); none without captions."""
        return [alternative for caption in self.captions or () for alternative in caption_alternatives(caption)]

    def sample(self, batch_size: int, generator: torch.Generator) -> ConceptBatch:
        """A batch drawn with the augmentation: the Custom Diffusion recipe (True), mirror images only
        ("flip", p = FLIP_PROBABILITY) or none (False). Without crops and pastes every example is a concept
        image or its mirror image, named in `sources`."""
        images, masks, prompts, sources = [], [], [], []
        for _ in range(batch_size):
            index = _uniform_int(0, len(self.images) - 1, generator)
            image, mask, edit = self.images[index], torch.ones(1, self.resolution, self.resolution), ""
            source = (index, False)
            if self.augment == "flip":
                flipped = bool(torch.rand(1, generator=generator) < FLIP_PROBABILITY)
                image, source = (image.flip(-1) if flipped else image), (index, flipped)
            elif self.augment:
                image, mask, edit = augment(image, self.resolution, generator)
                source = None
            images.append(image)
            masks.append(mask)
            sources.append(source)
            prompts.append(self.prompt(index, edit, generator))
        return ConceptBatch(torch.stack(images), torch.stack(masks), prompts, sources)
