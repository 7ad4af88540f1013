"""A loss plot drawn with PIL alone: the training log as an image ComfyUI can preview."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

COLOURS = {"teacher": (66, 135, 245), "student": (245, 130, 48), "discriminator": (90, 190, 90),
           "echo": (180, 90, 200)}


def loss_plot(history: list[dict], width: int = 512, height: int = 256) -> torch.Tensor:
    """Curves of the main losses over the steps, each scaled to its own range; [1, H, W, 3] in 0..1."""
    image = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(image)
    margin = 24
    for index, (name, colour) in enumerate(COLOURS.items()):
        points = [(entry["step"], entry[name]) for entry in history if name in entry]
        draw.text((margin + 110 * index, 4), name, fill=colour)
        if len(points) < 2:
            continue
        steps, values = zip(*points)
        low, high = min(values), max(values)
        first, last = history[0]["step"], max(history[-1]["step"], history[0]["step"] + 1)
        line = [(margin + (s - first) / (last - first) * (width - 2 * margin),
                 height - margin - (v - low) / ((high - low) or 1.0) * (height - 2 * margin - 12))
                for s, v in zip(steps, values)]
        draw.line(line, fill=colour, width=2)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
