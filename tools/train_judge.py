"""Train the bundled judge (`echodistill_core.lab.judge`) on procedural world images only.

Images get mild noise, blur and colour jitter so that the judge also reads generated images, which
are never quite as clean as rendered ones. Its shape vocabulary is every shape the world can draw,
the novel ones included: the judge is the yardstick (as DINO, which has seen dogs, is the paper's),
and a yardstick that cannot tell a heart from a circle cannot say whether a heart was learned. The
generative models never see the novel shapes.

    python tools/train_judge.py --out echodistill_core/assets/tiny/judge   # the bundled one: 30 min on one busy core
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

from echodistill_core.lab import world  # noqa: E402
from echodistill_core.lab.judge import Judge, load_judge, save_judge  # noqa: E402


def labels(judge: Judge, attributes: list[dict]) -> dict[str, torch.Tensor]:
    return {name: torch.tensor([values.index(item[name]) for item in attributes])
            for name, values in judge.classes.items()}


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random blur, per-image colour gain and offset, and Gaussian pixel noise."""
    count = len(images)
    blurred = F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    blur = (torch.rand(count, 1, 1, 1, generator=generator) < 0.3).float()
    images = images * (1 - blur) + blurred * blur
    gain = 1 + 0.1 * torch.randn(count, 3, 1, 1, generator=generator)
    offset = 0.05 * torch.randn(count, 3, 1, 1, generator=generator)
    noise = 0.1 * torch.rand(count, 1, 1, 1, generator=generator) * torch.randn(images.shape, generator=generator)
    return (images * gain + offset + noise).clamp(-1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="echodistill_core/assets/tiny/judge")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shapes", nargs="+", default=list(world.SHAPES + world.NOVEL_SHAPES),
                        help="the shape vocabulary (default: every shape the world draws)")
    args = parser.parse_args()
    shapes = tuple(args.shapes)
    torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    judge = Judge(classes=dict(world.ATTRIBUTES, shape=shapes))
    images, attributes = world.sample_batch(args.images, generator, shapes)
    targets = labels(judge, attributes)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=args.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps)
    start = time.time()
    for step in range(1, args.steps + 1):
        index = torch.randint(args.images, (args.batch,), generator=generator)
        logits = judge(augment(images[index], generator))
        loss = sum(F.cross_entropy(logits[name], targets[name][index]) for name in logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)

    save_judge(judge.eval(), args.out)
    judge = load_judge(args.out)
    test_images, test_attributes = world.sample_batch(2000, torch.Generator().manual_seed(args.seed + 1), shapes)
    for name, batch in (("clean", test_images), ("augmented", augment(test_images, generator))):
        predicted = judge.predict(batch)
        accuracy = {key: sum(p[key] == a[key] for p, a in zip(predicted, test_attributes)) / len(batch)
                    for key in judge.classes}
        print(f"held-out accuracy, {name}: {accuracy}")


if __name__ == "__main__":
    main()
