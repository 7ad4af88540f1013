"""Distill a bundled tiny teacher (pixel or latent) into a one-step student.

1. Dataset: random world prompts with one noise each (seeded), and the teacher's DDIM + CFG sample
   from that noise (`generate_teacher`'s sampler). Cached in files, since this is the dear part: each
   `--dataset` file is made with its own seeds, so several can be made in parallel (`--dataset-only`)
   and trained on together. Only pairs whose sample the judge finds right for its prompt are kept,
   so the student learns from the teacher's successes, not its slips (`--keep-attributes`: right in
   those attributes only, for a teacher whose shapes are seldom right).
2. Student: initialised from the teacher's UNet, trained to map the noise to the teacher's sample in
   ONE evaluation at the terminal timestep (as `generate_student` samples it). Pairs are augmented by
   horizontal flips of noise and sample together (the world and the teacher are mirror-symmetric; a
   VAE's latents are not, so a latent teacher's pairs are not flipped).
   Optionally, a "touch-up" term as in the EchoDistill student step: the student's sample from fresh
   noise is re-noised, the teacher denoises it in one guided evaluation, and the student regresses
   onto that, weighted by abar_t.
The student shares the teacher's text encoder (frozen, copied into its folder) and its VAE, if any, and
is saved with an Euler scheduler config (trailing spacing) and the teacher's prediction type, or
`--prediction`'s (SD-Turbo's epsilon: x0 = (z - sqrt(1 - abar) eps) / sqrt(abar) at the last timestep).

The bundled student was first made in about 50 min on two CPU cores, from the teacher before it learned
looks:

    python tools/distill_tiny_student.py --dataset /tmp/pairs0.pt --pairs 600 --dataset-only &
    python tools/distill_tiny_student.py --dataset /tmp/pairs1.pt --pairs 600 --dataset-only --seed 1100000 &
    wait   # 1200 pairs (10 min), 1120 of them right for their prompt
    python tools/distill_tiny_student.py --dataset /tmp/pairs0.pt /tmp/pairs1.pt --steps 800 --out /tmp/s1
    python tools/distill_tiny_student.py --dataset /tmp/pairs0.pt /tmp/pairs1.pt --init /tmp/s1 \
        --steps 600 --batch 32 --threads 2 --out /tmp/s2
    python tools/distill_tiny_student.py --dataset /tmp/pairs0.pt /tmp/pairs1.pt --init /tmp/s2 \
        --steps 600 --batch 32 --threads 2
    # one step, 200 prompts: shape 72.0 % after the first stage, 78.5 % after the second, 83.0 % after
    # the third; colour 100 %, size 98.5 %, background 100 %

then distilled again from the teacher that knows looks (`--looks`: 60 % of the prompts two-coloured, a pair
kept when the teacher's sample shows the look it was asked for), starting from itself:

    python tools/distill_tiny_student.py --dataset /tmp/looks-pairs0.pt --pairs 800 --looks 0.6 \
        --dataset-only --seed 2100000 &
    python tools/distill_tiny_student.py --dataset /tmp/looks-pairs1.pt --pairs 800 --looks 0.6 \
        --dataset-only --seed 3100000 &
    wait   # 1600 pairs (8 min each on one core), 1170 of them right, 547 of those two-coloured
    python tools/distill_tiny_student.py --dataset /tmp/looks-pairs0.pt --init echodistill_core/assets/tiny/student \
        --steps 500 --out /tmp/looks-s1   # 6 min: shape 76.0 %
    python tools/distill_tiny_student.py --dataset /tmp/looks-pairs0.pt /tmp/looks-pairs1.pt --init /tmp/looks-s1 \
        --steps 600 --batch 32 --threads 2 --lr 2e-4
    # 9 min on two cores; one step, 200 prompts: shape 83.0 %, colour 100 %, size 99.0 %, background 100 %;
    # 48 two-coloured prompts, the look read back from the pixels: 13 (2 before: band 6/19, dot 4/15,
    # halves 3/14)

The bundled latent student (epsilon-prediction, as SD-Turbo) was made from the latent teacher in about
12 min on two CPU cores (the teacher draws about 70 % of the pairs' shapes right, so pairs right in every
attribute are kept; 30 % of the prompts two-coloured):

    for part in "0 2200000 700" "1 3200000 700" "2 4200000 1400" "3 5200000 1400"; do set -- $part
        python tools/distill_tiny_student.py --teacher echodistill_core/assets/tiny/latent-teacher \
            --dataset /tmp/latent-pairs$1.pt --pairs $3 --teacher-steps 25 --looks 0.3 --dataset-only --seed $2 &
    done; wait   # 4200 pairs (about 2 min each, two at a time), 2831 of them right
    python tools/distill_tiny_student.py --teacher echodistill_core/assets/tiny/latent-teacher \
        --dataset /tmp/latent-pairs{0,1,2,3}.pt --prediction epsilon --steps 2500 --batch 32 --threads 2 \
        --out /tmp/latent-s1   # 5 min: shape 47.0 %
    python tools/distill_tiny_student.py --teacher echodistill_core/assets/tiny/latent-teacher \
        --dataset /tmp/latent-pairs{0,1,2,3}.pt --init /tmp/latent-s1 --prediction epsilon --steps 1500 \
        --batch 32 --lr 1e-4 --threads 2 --out echodistill_core/assets/tiny/latent-student
    # 3 min; one step, 200 prompts: shape 52.0 %, colour 95.5 %, size 87.5 %, background 99.5 % (the
    # first latent student, from the first latent teacher: shape 8.0 %, colour 70.0 %)
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
from diffusers import EulerDiscreteScheduler  # noqa: E402

from echodistill_core.config import TINY_TEACHER_GUIDANCE  # noqa: E402
from echodistill_core.lab import world  # noqa: E402
from echodistill_core.lab.judge import attribute_accuracy, comfy_to_world, load_judge, measure_attributes  # noqa: E402
from echodistill_core.loading import load_diffusers_folder, save_diffusers_folder  # noqa: E402
from echodistill_core.models import DiffusionModel  # noqa: E402
from echodistill_core.sampling import generate_student, guided_x0, initial_noise, teacher_sample  # noqa: E402
from echodistill_core.schedule import NoiseSchedule  # noqa: E402


def student_scheduler(prediction_type: str) -> EulerDiscreteScheduler:
    """SD-Turbo's scheduler configuration: SD's betas, Euler, trailing timestep spacing."""
    return EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  prediction_type=prediction_type, timestep_spacing="trailing")


@torch.no_grad()
def make_dataset(teacher: DiffusionModel, text, count: int, steps: int, guidance: float, seed: int,
                 batch: int = 50, looks: float = 0.0) -> dict:
    """`count` (noise, prompt, teacher sample) triples, a share `looks` of two-coloured objects; noise from
    seeds seed, seed + 1, ..."""
    generator = torch.Generator().manual_seed(seed)
    attributes = [world.sample_attributes(generator, looks=looks) for _ in range(count)]
    prompts = [world.random_caption(item, text.tokenizer, generator) for item in attributes]
    seeds = list(range(seed, seed + count))
    noise = initial_noise(teacher, seeds)
    uncond, samples, start = text([""]), [], time.time()
    for index in range(0, count, batch):
        part = slice(index, index + batch)
        sample = teacher_sample(teacher, text(prompts[part]), uncond, noise[part], steps, guidance)
        samples.append(sample.clamp(-1, 1) if teacher.in_pixel_space else sample)
        print(f"  dataset {index + len(samples[-1])}/{count} {time.time() - start:.0f}s", flush=True)
    return dict(noise=noise, prompts=prompts, attributes=attributes, samples=torch.cat(samples), steps=steps,
                guidance=guidance)


def load_datasets(files: list[Path], args, teacher: DiffusionModel, text, judge) -> dict:
    """The pairs of every file (made first where missing), kept only where the judge finds them right; a
    two-coloured object's only where its shape and look are read from the pixels (`world.recognise_concept`)."""
    parts = []
    for index, file in enumerate(files):
        if not file.exists():
            seed = args.seed + index * 1_000_000
            torch.save(make_dataset(teacher, text, args.pairs, args.teacher_steps, args.guidance, seed,
                                    looks=args.looks), file)
        parts.append(torch.load(file))
    dataset = dict(noise=torch.cat([part["noise"] for part in parts]),
                   samples=torch.cat([part["samples"] for part in parts]),
                   prompts=[prompt for part in parts for prompt in part["prompts"]],
                   attributes=[item for part in parts for item in part["attributes"]])
    with torch.no_grad():
        images = torch.cat([teacher.decode(part).clamp(-1, 1) for part in dataset["samples"].split(100)])
    measured = measure_attributes(images, judge)
    right = [all(m[name] == a[name] for name in args.keep_attributes) for m, a in zip(measured, dataset["attributes"])]
    for index, item in enumerate(dataset["attributes"]):
        if item.get("look"):
            right[index] = world.recognise_concept(images[index : index + 1], item)[0]["look"]
    looks = [item.get("look") is not None for item in dataset["attributes"]]
    print(f"two-coloured: {sum(looks)} pairs, {sum(r for r, look in zip(right, looks) if look)} of them right")
    accuracy = attribute_accuracy(images, dataset["attributes"], judge)
    print(f"{len(right)} pairs, teacher DDIM {parts[0]['steps']} steps, CFG {parts[0]['guidance']}; right for "
          f"their prompt in {', '.join(args.keep_attributes)}: {sum(right)} ({accuracy})")
    keep = torch.tensor(right)
    return dict(noise=dataset["noise"][keep], samples=dataset["samples"][keep],
                prompts=[p for p, ok in zip(dataset["prompts"], right) if ok])


def flip_pairs(noise: torch.Tensor, samples: torch.Tensor, generator: torch.Generator, share: float = 0.5):
    """Mirror a random `share` of the (noise, sample) pairs left-right."""
    flip = (torch.rand(len(noise), generator=generator) < share).view(-1, 1, 1, 1)
    return torch.where(flip, noise.flip(-1), noise), torch.where(flip, samples.flip(-1), samples)


def touch_up_loss(student: DiffusionModel, teacher: DiffusionModel, cond, uncond, noise, guidance, generator):
    """abar-weighted regression of the student's sample onto the teacher's guided denoising of it."""
    terminal = torch.full((len(noise),), student.schedule.terminal_timestep, dtype=torch.long)
    x_s = student.predict_x0(noise, terminal, cond)
    t = torch.randint(teacher.schedule.num_train_timesteps, (len(noise),), generator=generator)
    with torch.no_grad():
        renoised = teacher.schedule.add_noise(x_s, torch.randn(x_s.shape, generator=generator), t)
        x_t = guided_x0(teacher, renoised, t, cond, uncond, guidance)
    weight = teacher.schedule.abar(t, x_s)
    return (weight * (x_s - x_t).square()).mean()


def evaluate(student: DiffusionModel, text, judge, count: int = 200) -> dict:
    prompts, attributes = world.evaluation_set(count)
    images = generate_student(student, text, prompts, list(range(count)))
    return attribute_accuracy(comfy_to_world(images), attributes, judge)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="echodistill_core/assets/tiny/teacher")
    parser.add_argument("--out", default="echodistill_core/assets/tiny/student")
    parser.add_argument("--init", help="start from this student folder (a second stage) instead of the teacher")
    parser.add_argument("--dataset", type=Path, nargs="+", default=[Path("/tmp/echodistill_tiny_pairs.pt")],
                        help="cache files of teacher pairs, made (with --pairs pairs each) where missing")
    parser.add_argument("--dataset-only", action="store_true", help="make the dataset files, then stop")
    parser.add_argument("--pairs", type=int, default=1200)
    parser.add_argument("--teacher-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=TINY_TEACHER_GUIDANCE, help="teacher CFG scale for the targets")
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--touch-up-batch", type=int, default=0, help="0 turns the touch-up term off")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--ema", type=float, default=0.99)
    parser.add_argument("--keep-attributes", nargs="+", choices=tuple(world.ATTRIBUTES),
                        default=list(world.ATTRIBUTES), help="keep the pairs right in these attributes (default: all)")
    parser.add_argument("--prediction", choices=("epsilon", "v_prediction", "sample"),
                        help="the student's prediction type (default: the teacher's)")
    parser.add_argument("--looks", type=float, default=0.0,
                        help="share of two-coloured objects (world.LOOKS) in a new dataset's prompts")
    parser.add_argument("--seed", type=int, default=100000, help="first noise seed of the dataset")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    teacher, text = load_diffusers_folder(args.teacher)
    judge = load_judge()
    dataset = load_datasets(args.dataset, args, teacher, text, judge)
    if args.dataset_only:
        return

    start_from = load_diffusers_folder(args.init)[0].unet.float() if args.init else teacher.unet
    unet = copy.deepcopy(start_from).train().requires_grad_(True)
    scheduler = student_scheduler(args.prediction or teacher.schedule.prediction_type)
    schedule = NoiseSchedule.from_scheduler_config(scheduler.config)
    student = DiffusionModel(unet=unet, schedule=schedule, vae=teacher.vae, name="tiny-student")
    ema = DiffusionModel(unet=copy.deepcopy(unet).eval().requires_grad_(False), schedule=schedule,
                         vae=teacher.vae, name="tiny-student")
    print("student before distillation:", evaluate(student, text, judge), flush=True)
    with torch.no_grad():
        conds = torch.cat([text(dataset["prompts"][i : i + 100]) for i in range(0, len(dataset["prompts"]), 100)])
        uncond = text([""])
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(0)
    terminal = torch.full((args.batch,), teacher.schedule.terminal_timestep, dtype=torch.long)
    start = time.time()
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        index = torch.randint(len(conds), (args.batch,), generator=generator)
        noise, target = flip_pairs(dataset["noise"][index], dataset["samples"][index], generator,
                                   0.5 if teacher.in_pixel_space else 0.0)
        loss = F.mse_loss(student.predict_x0(noise, terminal, conds[index]), target)
        if args.touch_up_batch:
            fresh = torch.randint(len(conds), (args.touch_up_batch,), generator=generator)
            noise = torch.randn((args.touch_up_batch, *student.latent_shape()), generator=generator)
            loss = loss + touch_up_loss(student, teacher, conds[fresh], uncond, noise, args.guidance, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            for ema_param, param in zip(ema.unet.parameters(), unet.parameters()):
                ema_param.lerp_(param, 1 - min(args.ema, (1 + step) / (10 + step)))
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
        if step % 200 == 0 or step == args.steps:
            print(f"  one-step accuracy (200 prompts): {evaluate(ema, text, judge)}", flush=True)

    for module in (ema.unet, ema.vae, text.text_encoder):
        if module is not None:
            module.to(torch.float16)
    save_diffusers_folder(args.out, ema, text, scheduler)
    loaded, loaded_text = load_diffusers_folder(args.out)
    print(f"saved {args.out} after {time.time() - start:.0f}s; reloaded:", evaluate(loaded, loaded_text, judge))


if __name__ == "__main__":
    main()
