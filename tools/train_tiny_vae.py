"""Train the bundled tiny VAE: SD's AutoencoderKL architecture at 32 px, 4 x 8 x 8 latents.

Three encoder/decoder levels (SD has four: 512 px -> 64 x 64 latents; here 32 px -> 8 x 8), four
latent channels, the mid-block's self-attention, a diagonal Gaussian posterior with a small KL term.
It learns the procedural world of `echodistill_core.lab.world`, and, so that it also reconstructs looks the
diffusion models never saw (a personal concept is by definition one), a share of every batch (`--novel`,
half by default) is drawn here in other looks: random colours of object and background, two-colour
objects, stripes, inner dots, the novel shapes. As SD's, `scaling_factor` is 1 / the standard
deviation of the latents (the posterior means) of world images, so the diffusion models see latents of
unit variance.

The bundled VAE (0.95 M parameters, 1.9 MB in float16) was made in two stages on one CPU core, the
second also on the world's two-coloured objects (`--looks`):

    python tools/train_tiny_vae.py --out /tmp/tiny-vae-1 --steps 800 --batch 16 --save-every 200
    # stopped after its save at step 400 (16 min on a shared core): world 21.3 dB; the judge names the
    # shape of 44 % of reconstructed world images
    python tools/train_tiny_vae.py --resume /tmp/tiny-vae-1 --out /tmp/tiny-vae --steps 3000 --lr 5e-4 \
        --warmup 20 --looks 0.5 --novel 0.3 --save-every 500 --seed 21
    # 15 min; scaling_factor 0.695. 256 images each, mean squared error in [-1, 1] (PSNR): world 0.0037
    # (30.3 dB); looks it never drew in the world: random colours 0.011 (25.8 dB), two colours 0.015
    # (24.1 dB), stripes 0.030 (21.2 dB), inner dots 0.024 (22.2 dB). The judge on reconstructed world
    # images: shape 93 %, colour, size and background 100 % (what a latent model can show at best).

The latent teacher (`tools/train_tiny_teacher.py --vae /tmp/tiny-vae`) copies it into its folder.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402

from echodistill_core.lab import world  # noqa: E402
from echodistill_core.lab.judge import attribute_accuracy, load_judge  # noqa: E402

NOVEL_LOOKS = ("random colours", "two colours", "stripes", "inner dots")
INITIAL_LOG_VARIANCE = -8.0


def build_vae(channels: tuple[int, ...], layers_per_block: int, seed: int, groups: int) -> AutoencoderKL:
    """SD's VAE layout with `channels` per level: 32 px / 2^(levels - 1) latents of 4 channels.

    `groups` of the group norms: SD's 32 groups on 32 channels would normalise each channel alone over
    the image, taking away a flat image's colour, which is most of what the world is."""
    torch.manual_seed(seed)
    levels = len(channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=channels,
        layers_per_block=layers_per_block, latent_channels=4, norm_num_groups=groups, sample_size=world.IMAGE_SIZE,
    )
    with torch.no_grad():  # the posterior starts narrow (std 0.02): a unit-variance one hides the mean at first
        vae.quant_conv.bias[vae.config.latent_channels:] = INITIAL_LOG_VARIANCE
    return vae


# ----------------------------------------------------------------------------------------------------
# Looks the world does not draw, composed from its shapes' coverage

def _rand(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=generator)


def _coverage(shape: str, size: str, x: float, y: float) -> torch.Tensor:
    """[1, 32, 32] anti-aliased coverage of a shape: the world's drawing of it, white on black."""
    drawn = world.render(dict(shape=shape, size=size, color=(1.0, 1.0, 1.0), background=(0.0, 0.0, 0.0), x=x, y=y))
    return (drawn[:1] + 1) / 2


def _pattern(look: str, generator: torch.Generator, x: float, y: float) -> torch.Tensor:
    """[1, 32, 32] in [0, 1]: where the object (centred at x, y) shows its second colour in `look`."""
    grid = torch.arange(world.IMAGE_SIZE, dtype=torch.float32) + 0.5
    v, u = torch.meshgrid(grid, grid, indexing="ij")
    angle = float(_rand(generator, 1)) * math.pi
    along = u * math.cos(angle) + v * math.sin(angle)
    if look == "two colours":  # split by a line near the object's centre
        centre = x * math.cos(angle) + y * math.sin(angle)
        return (along > centre + (float(_rand(generator, 1)) - 0.5) * 4).float()[None]
    if look == "stripes":
        period = 3 + float(_rand(generator, 1)) * 4
        return (torch.remainder(along + float(_rand(generator, 1)) * period, period) < period / 2).float()[None]
    if look == "inner dots":
        spacing = 4 + float(_rand(generator, 1)) * 3
        offset = _rand(generator, 2) * spacing
        du = torch.remainder(u + offset[0], spacing) - spacing / 2
        dv = torch.remainder(v + offset[1], spacing) - spacing / 2
        return ((du.square() + dv.square()).sqrt() <= spacing / 4).float()[None]
    return torch.zeros(1, world.IMAGE_SIZE, world.IMAGE_SIZE)


def novel_look(look: str, generator: torch.Generator) -> torch.Tensor:
    """[3, 32, 32] in [-1, 1]: a world shape (novel shapes included) in `look` on a random-colour background."""
    attributes = world.sample_attributes(generator, world.ALL_SHAPES)
    alpha = _coverage(attributes["shape"], attributes["size"], attributes["x"], attributes["y"])
    background, first, second = (_rand(generator, 3, 1, 1) for _ in range(3))
    fill = first + (second - first) * _pattern(look, generator, attributes["x"], attributes["y"])
    return (background * (1 - alpha) + fill * alpha) * 2 - 1


def novel_batch(count: int, generator: torch.Generator, look: str | None = None) -> torch.Tensor:
    """`count` images in `look`, or each in a random one of `NOVEL_LOOKS`."""
    looks = [look or NOVEL_LOOKS[int(torch.randint(len(NOVEL_LOOKS), (1,), generator=generator))]
             for _ in range(count)]
    return torch.stack([novel_look(name, generator) for name in looks])


def training_batch(count: int, generator: torch.Generator, novel: float, looks: float = 0.0) -> torch.Tensor:
    """World images (a share `looks` of them two-coloured) and a share `novel` of images in novel looks."""
    novel_count = round(count * novel)
    world_images, _ = world.sample_batch(count - novel_count, generator, looks=looks)
    return torch.cat([world_images, novel_batch(novel_count, generator)])


# ----------------------------------------------------------------------------------------------------
# Measuring

@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Decode the posterior mean: what `DiffusionModel.encode` then `decode` does."""
    return vae.decode(vae.encode(images.to(vae.dtype)).latent_dist.mean).sample.float().clamp(-1, 1)


def reconstruction_report(vae: AutoencoderKL, count: int = 256, seed: int = 999) -> dict[str, float]:
    """Mean squared error (images in [-1, 1]) and PSNR (dB, on [0, 1]) of world images and of each novel look."""
    generator = torch.Generator().manual_seed(seed)
    sets = {"world": world.sample_batch(count, generator)[0]}
    sets |= {look: novel_batch(count, generator, look) for look in NOVEL_LOOKS}
    report = {}
    for name, images in sets.items():
        error = (reconstruct(vae, images) - images).square().mean().item()
        report[name] = dict(mse=round(error, 5), psnr=round(10 * math.log10(4 / error), 2))
    return report


def judged_reconstructions(vae: AutoencoderKL, count: int = 256, seed: int = 998) -> dict[str, float]:
    """The judge's attribute accuracy on reconstructed world images: what a latent model can show at best."""
    images, attributes = world.sample_batch(count, torch.Generator().manual_seed(seed))
    return attribute_accuracy(reconstruct(vae, images), attributes, load_judge())


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, count: int = 512, seed: int = 4321) -> float:
    """1 / the standard deviation of the posterior means of world images (SD's 0.18215 is this, for its data)."""
    images, _ = world.sample_batch(count, torch.Generator().manual_seed(seed))
    return 1.0 / vae.encode(images.to(vae.dtype)).latent_dist.mean.float().std().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/tiny-vae")
    parser.add_argument("--looks", type=float, default=0.0, help="share of the world's images two-coloured")
    parser.add_argument("--novel", type=float, default=0.5, help="fraction of each batch in novel looks")
    parser.add_argument("--kl", type=float, default=1e-5, help="weight of the KL term (per latent element)")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64])
    parser.add_argument("--layers-per-block", type=int, default=1)
    parser.add_argument("--groups", type=int, default=8, help="of the group norms")
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--resume", help="continue from this VAE folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.resume:
        vae = AutoencoderKL.from_pretrained(args.resume, torch_dtype=torch.float32, local_files_only=True)
    else:
        vae = build_vae(tuple(args.channels), args.layers_per_block, args.seed, args.groups)
    vae.train().requires_grad_(True)
    ema = copy.deepcopy(vae).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=1e-2)
    print(f"VAE {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters", flush=True)

    def save() -> None:
        kept = copy.deepcopy(ema)
        kept.register_to_config(scaling_factor=round(latent_scaling_factor(kept), 4))
        kept.to(torch.float16).save_pretrained(args.out)

    generator = torch.Generator().manual_seed(args.seed)
    start, running = time.time(), torch.zeros(3)
    for step in range(1, args.steps + 1):
        scale = min(1.0, step / args.warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = args.lr * max(scale, 0.02)
        images = training_batch(args.batch, generator, args.novel, args.looks)
        posterior = vae.encode(images).latent_dist
        decoded = vae.decode(posterior.sample(generator)).sample
        mse, l1 = F.mse_loss(decoded, images), F.l1_loss(decoded, images)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = mse + l1 + args.kl * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for ema_param, param in zip(ema.parameters(), vae.parameters()):
                ema_param.lerp_(param, 1 - decay)
        running += torch.tensor([mse.item(), l1.item(), kl.item()])
        if step % 50 == 0:
            mse_, l1_, kl_ = (running / 50).tolist()
            print(f"step {step} mse {mse_:.5f} l1 {l1_:.4f} kl {kl_:.2f} {time.time() - start:.0f}s", flush=True)
            running.zero_()
        if args.save_every and step % args.save_every == 0:
            save()
            print(f"  saved; reconstruction (64 each): {reconstruction_report(ema, 64)}; "
                  f"judged: {judged_reconstructions(ema, 64)}", flush=True)

    save()
    loaded = AutoencoderKL.from_pretrained(args.out, torch_dtype=torch.float32, local_files_only=True)
    print(f"saved {args.out} after {time.time() - start:.0f}s, scaling_factor {loaded.config.scaling_factor}; "
          f"reconstruction (256 each): {reconstruction_report(loaded)}; judged (256): {judged_reconstructions(loaded)}")


if __name__ == "__main__":
    main()
