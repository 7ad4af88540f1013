"""Train a bundled tiny teacher from scratch: a pixel-space UNet and a CLIP text encoder, jointly; or,
with `--vae`, a UNet on that VAE's latents conditioned on an existing teacher's text encoder.

The teacher learns the procedural world of `echodistill_core.lab.world` at 32x32 with v-prediction (or
epsilon) on SD's noise schedule; 10 % of the prompts are replaced by "" so that classifier-free
guidance works. The weights kept are an exponential moving average. The result is a diffusers folder
that `echodistill_core.loading.load_diffusers_folder` reads (with `vae/` for a latent teacher).

The bundled teacher (2.7 M parameters, 5.4 MB in float16) was made in two stages, about 3 h
on one CPU core, then fine-tuned on a world with looks (below, 84 min more):

    python tools/train_tiny_teacher.py --out /tmp/stage1 --steps 6500 --batch 16 --ema 0.999
    # stage 1 was stopped after its EMA save at step 6000: shape right in 86.5 % of 200 prompts
    python tools/train_tiny_teacher.py --resume /tmp/stage1 --steps 1000 --batch 16 --lr 2e-4 \
        --warmup 50 --ema 0.998 --seed 7 --eval-every 0 --save-every 250
    # 200 prompts, 25 DDIM steps, CFG 3: shape 97.0 %, colour, size and background 100 %

A world that knows looks (`--looks`: a share of two-coloured objects, named in their captions, "red circle
with blue lower on teal") is what a concept with its own look needs its base model to know, as SD knows dogs
of every coat. Fine-tuned on such a world from the two-stage teacher above, the teacher learns the looks
slowly, the halves (where the colours must go up and down) slowest; after each stage, 48 two-coloured
prompts (25 DDIM steps, CFG 3), the look read back from the pixels. The last stage is the bundled teacher:

    python tools/train_tiny_teacher.py --resume echodistill_core/assets/tiny/teacher --out /tmp/looks1 \
        --looks 0.5 --batch 16 --lr 2e-4 --warmup 50 --ema 0.995 --steps 400 --eval-every 0 --seed 11
    python tools/train_tiny_teacher.py --resume /tmp/looks1 --out /tmp/looks2 --looks 0.5 --batch 16 \
        --lr 3e-4 --warmup 20 --ema 0.995 --steps 1200 --eval-every 0 --seed 12
    # 32 min in all on one shared core: halves 2/14, dot 1/15, band 0/19; plain prompts: shape 89 %
    python tools/train_tiny_teacher.py --resume /tmp/looks2 --out /tmp/looks3 --looks 0.7 --batch 16 \
        --lr 3e-4 --warmup 20 --ema 0.995 --steps 1500 --eval-every 0 --seed 13
    # 23 min: halves 2/14, dot 3/15, band 3/19; plain prompts: shape 100 %
    python tools/train_tiny_teacher.py --resume /tmp/looks3 --out echodistill_core/assets/tiny/teacher \
        --looks 0.8 --batch 16 --lr 3e-4 --warmup 20 --ema 0.995 --steps 4000 --eval-every 0 --seed 14 --threads 2
    # 29 min on two cores: halves 3/14, dot 10/15, band 10/19; plain prompts: shape, colour, size,
    # background 100 %

A concept with a look trained on it (Custom Diffusion, 300 steps; the demo's red circle with a blue band)
is drawn with its look when its photos are only mirrored and captioned in the world's words ("a <mine>
circle on black"): recognised in 7 of 16 samples, and red circles with a blue band in most of the rest.
With the Custom Diffusion recipe's pastes and crops and its template prompts, none: the red and the blue
are drawn, but either may be the band.

The bundled latent teacher (a 2.47 M-parameter UNet on the 4 x 8 x 8 latents of the tiny VAE,
`tools/train_tiny_vae.py`; the pixel pair's text encoder, frozen; 4.9 MB in float16) was made in 24 min on
one CPU core, 30 % of its world two-coloured:

    python tools/train_tiny_teacher.py --vae /tmp/tiny-vae --text echodistill_core/assets/tiny/teacher \
        --out echodistill_core/assets/tiny/latent-teacher --channels 64 96 --batch 32 --steps 6000 \
        --lr 1e-3 --warmup 100 --ema 0.998 --eval-every 2000 --save-every 1000 --looks 0.3 --seed 31
    # 64 prompts, 25 DDIM steps, CFG 3: shape 79.7 %, colour, size and background 100 % (the VAE's round
    # trip alone keeps 93 % of the shapes); two-coloured prompts: the look as named in 12 of 48.
    # (The same with batch 16 and 8000 steps: shape 76.6 %. The first latent teacher, on the first VAE,
    # 1400 steps: shape 18.8 %.)
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
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel  # noqa: E402

from echodistill_core.config import TINY_TEACHER_GUIDANCE  # noqa: E402
from echodistill_core.lab import world  # noqa: E402
from echodistill_core.lab.judge import attribute_accuracy, comfy_to_world, load_judge  # noqa: E402
from echodistill_core.loading import load_diffusers_folder, save_diffusers_folder  # noqa: E402
from echodistill_core.models import DiffusionModel, TextConditioner  # noqa: E402
from echodistill_core.sampling import generate_teacher  # noqa: E402
from echodistill_core.schedule import NoiseSchedule  # noqa: E402
from echodistill_core.lab.tiny import TINY_TEXT_WIDTH, tiny_text  # noqa: E402


def build_unet(channels: tuple[int, ...], layers_per_block: int, seed: int, in_channels: int = 3,
               sample_size: int = world.IMAGE_SIZE) -> UNet2DConditionModel:
    """The tiny UNet layout: no attention at full resolution (32 px images, or 8 x 8 latents of 4 channels),
    cross-attention below it."""
    torch.manual_seed(seed)
    levels = len(channels)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels, block_out_channels=channels,
        layers_per_block=layers_per_block, cross_attention_dim=TINY_TEXT_WIDTH,
        attention_head_dim=tuple(max(1, width // 16) for width in channels),
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",), norm_num_groups=32,
    )


def teacher_scheduler(prediction_type: str) -> DDIMScheduler:
    """SD's DDIM configuration: scaled linear betas 0.00085-0.012 over 1000 steps."""
    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=False,
                         steps_offset=1)


def training_batch(count: int, tokenizer, generator: torch.Generator, drop: float, looks: float = 0.0):
    """World images and captions from varied templates (a share `looks` of two-coloured objects); a fraction
    `drop` of the captions is ""."""
    images, attributes = world.sample_batch(count, generator, looks=looks)
    prompts = [world.random_caption(item, tokenizer, generator) for item in attributes]
    dropped = torch.rand(count, generator=generator) < drop
    return images, ["" if drop_it else prompt for prompt, drop_it in zip(prompts, dropped)]


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for ema_param, param in zip(ema.parameters(), model.parameters()):
        ema_param.lerp_(param, 1 - decay)


def save_ema(folder: Path, model: DiffusionModel, text: TextConditioner, scheduler, dtype: torch.dtype) -> None:
    """Save copies of the EMA weights (and the VAE) in `dtype`; training goes on with the float32 originals."""
    unet, encoder = copy.deepcopy(model.unet).to(dtype), copy.deepcopy(text.text_encoder).to(dtype)
    vae = None if model.vae is None else copy.deepcopy(model.vae).to(dtype)
    save_diffusers_folder(folder, DiffusionModel(unet=unet, schedule=model.schedule, vae=vae, name=model.name),
                          TextConditioner(text.tokenizer, encoder), scheduler)


def pixel_accuracy(model: DiffusionModel, text: TextConditioner, count: int, guidance: float) -> dict:
    """Attribute accuracy of 25-step samples: colour, size, background from pixels, shape by the judge."""
    prompts, attributes = world.evaluation_set(count)
    images = generate_teacher(model, text, prompts, list(range(count)), guidance_scale=guidance)
    return attribute_accuracy(comfy_to_world(images), attributes, load_judge())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="echodistill_core/assets/tiny/teacher")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--ema", type=float, default=0.998)
    parser.add_argument("--drop", type=float, default=0.1, help="fraction of empty prompts (for CFG)")
    parser.add_argument("--looks", type=float, default=0.0,
                        help="share of two-coloured objects (world.LOOKS), named in their captions")
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 96])
    parser.add_argument("--layers-per-block", type=int, default=1)
    parser.add_argument("--prediction", default="v_prediction", choices=("v_prediction", "epsilon", "sample"))
    parser.add_argument("--vae", help="a VAE folder (tools/train_tiny_vae.py): train on its latents")
    parser.add_argument("--text", help="a teacher folder whose text encoder and tokenizer to use, frozen")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--save-every", type=int, default=500, help="also save the EMA weights every N steps")
    parser.add_argument("--eval-guidance", type=float, default=TINY_TEACHER_GUIDANCE)
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"), help="of saved weights")
    parser.add_argument("--resume", help="continue from this teacher folder instead of starting afresh")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vae = None
    if args.resume:
        model, text = load_diffusers_folder(args.resume)
        unet, vae = model.unet.train().requires_grad_(True), model.vae
    else:
        if args.vae:
            vae = AutoencoderKL.from_pretrained(args.vae, local_files_only=True).float().eval().requires_grad_(False)
        text = load_diffusers_folder(args.text)[1] if args.text else tiny_text(args.seed)
        latent_channels, latent_size = (3, world.IMAGE_SIZE) if vae is None else (
            vae.config.latent_channels, world.IMAGE_SIZE // 2 ** (len(vae.config.block_out_channels) - 1))
        unet = build_unet(tuple(args.channels), args.layers_per_block, args.seed, latent_channels, latent_size)
    train_text = not (args.text or (args.resume and vae is not None))  # a latent teacher keeps the given encoder
    text.text_encoder.float().train().requires_grad_(train_text)
    unet.train().requires_grad_(True)
    scheduler = teacher_scheduler(args.prediction)
    schedule = NoiseSchedule.from_scheduler_config(scheduler.config)
    ema_unet, ema_encoder = copy.deepcopy(unet).eval(), copy.deepcopy(text.text_encoder).eval()
    ema_model = DiffusionModel(unet=ema_unet, schedule=schedule, vae=vae, name="tiny-teacher")
    ema_text = TextConditioner(text.tokenizer, ema_encoder)
    params = list(unet.parameters()) + (list(text.text_encoder.parameters()) if train_text else [])
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    count = sum(p.numel() for p in params)
    print(f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M, total {count / 1e6:.2f} M parameters")

    generator = torch.Generator().manual_seed(args.seed)
    start, running = time.time(), 0.0
    for step in range(1, args.steps + 1):
        lr_scale = min(1.0, step / args.warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = args.lr * max(lr_scale, 0.05)
        images, prompts = training_batch(args.batch, text.tokenizer, generator, args.drop, args.looks)
        with torch.no_grad():
            images = ema_model.encode(images)  # latents with a VAE, the images themselves without
        eps = torch.randn(images.shape, generator=generator)
        t = torch.randint(schedule.num_train_timesteps, (args.batch,), generator=generator)
        z_t = schedule.add_noise(images, eps, t)
        output = unet(z_t, t, text(prompts)).sample
        loss = torch.nn.functional.mse_loss(output, schedule.target(images, eps, t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        update_ema(ema_unet, unet, decay)
        if train_text:
            update_ema(ema_encoder, text.text_encoder, decay)
        running += loss.item()
        if step % 50 == 0:
            print(f"step {step} loss {running / 50:.4f} {time.time() - start:.0f}s", flush=True)
            running = 0.0
        if args.eval_every and step % args.eval_every == 0:
            print(f"  pixel accuracy (32 prompts, cfg {args.eval_guidance}):",
                  pixel_accuracy(ema_model, ema_text, 32, args.eval_guidance), flush=True)
        if args.save_every and step % args.save_every == 0:
            save_ema(Path(args.out), ema_model, ema_text, scheduler, getattr(torch, args.dtype))

    out = Path(args.out)
    save_ema(out, ema_model, ema_text, scheduler, getattr(torch, args.dtype))
    model, loaded_text = load_diffusers_folder(out)
    print(f"saved {out} after {time.time() - start:.0f}s; reloaded pixel accuracy (64 prompts):",
          pixel_accuracy(model, loaded_text, 64, args.eval_guidance))


if __name__ == "__main__":
    main()
