"""Train the tiny world's image network: a small ViT that stands where DINO and CLIP stand for real pairs.

The paper's discriminators and feature network look at images through pretrained image networks that tell
one dog's coat from another's. The tiny world has no such network, and the judge is the yardstick, so it may
not be one (a method trained against its own judge proves nothing). This one is separate: a transformers
ViT (DINO's architecture, read by `image_networks.load_dino` as any DINO folder is), trained on world renders
with looks to name each object's shape, colour, look and second colour, size and background, with the
judge's augmentation so that it also reads generated images. Its CLS token is the feature.

    python tools/train_tiny_image_network.py --steps 5000 --threads 2   # the bundled one: 10 min on two cores

The bundled one (0.31 M parameters, 0.6 MB in float16) names 2000 held-out renders, half of them
two-coloured, with these accuracies: shape 0.99, colour 0.99, look 0.96, second colour 0.97, size and
background 1.00 (the same on augmented renders).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from transformers import ViTConfig, ViTModel  # noqa: E402

from echodistill_core.backbones import ImageBackbone  # noqa: E402
from echodistill_core.image_networks import load_dino  # noqa: E402
from echodistill_core.lab import world  # noqa: E402
from train_judge import augment  # noqa: E402

NONE = "none"
CLASSES = dict(world.ATTRIBUTES, shape=world.ALL_SHAPES, look=(NONE, *world.LOOKS), color2=(NONE, *world.COLORS))


def labels(attributes: list[dict]) -> dict[str, torch.Tensor]:
    return {name: torch.tensor([values.index(item.get(name, NONE)) for item in attributes])
            for name, values in CLASSES.items()}


def accuracy(backbone: ImageBackbone, heads: nn.ModuleDict, images: torch.Tensor, targets: dict) -> dict:
    with torch.no_grad():
        features = torch.cat([backbone(chunk) for chunk in images.split(256)])
    return {name: round(float((head(features).argmax(1) == targets[name]).float().mean()), 3)
            for name, head in heads.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="echodistill_core/assets/tiny/image-network")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--looks", type=float, default=0.5, help="the share of two-coloured objects")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)

    config = ViTConfig(image_size=world.IMAGE_SIZE, patch_size=4, num_channels=3, hidden_size=args.width,
                       num_hidden_layers=args.layers, num_attention_heads=4, intermediate_size=2 * args.width,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    network = ViTModel(config, add_pooling_layer=False)
    backbone = ImageBackbone.from_transformers(network).train()
    backbone.network.requires_grad_(True).train()
    heads = nn.ModuleDict({name: nn.Linear(args.width, len(values)) for name, values in CLASSES.items()})
    images, attributes = world.sample_batch(args.images, generator, world.ALL_SHAPES, looks=args.looks)
    targets = labels(attributes)
    parameters = [*backbone.network.parameters(), *heads.parameters()]
    print(f"{sum(p.numel() for p in backbone.network.parameters()) / 1e6:.2f} M parameters", flush=True)
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps)
    start = time.time()
    for step in range(1, args.steps + 1):
        index = torch.randint(args.images, (args.batch,), generator=generator)
        features = backbone(augment(images[index], generator))
        loss = sum(F.cross_entropy(head(features), targets[name][index]) for name, head in heads.items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        if step % 200 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)

    network.eval().to(torch.float16).save_pretrained(args.out, safe_serialization=True)  # as the pairs ship
    loaded = load_dino(args.out)
    test_images, test_attributes = world.sample_batch(2000, torch.Generator().manual_seed(args.seed + 1),
                                                      world.ALL_SHAPES, looks=args.looks)
    test_targets = labels(test_attributes)
    for name, batch in (("clean", test_images), ("augmented", augment(test_images, generator))):
        print(f"held-out accuracy, {name}: {accuracy(loaded, heads.eval(), batch, test_targets)}", flush=True)


if __name__ == "__main__":
    main()
