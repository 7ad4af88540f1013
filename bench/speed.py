"""Speed of EchoDistill, as ratios measured within one run, so that they carry over between machines.

Two pairs, each timed in its own interleaved rounds:
- pixel: the bundled tiny pair's architecture (random, pixel space: no VAE ever runs), `--size` px, with
  the base teacher's features as discriminator and feature network (`--pixel-networks teacher`, what a run
  chooses when given no image network) or with the bundled pair's own networks, as the demo trains
  (`bundled`: a second discriminator and the feature network on the tiny image network);
- latent: an SD-proportioned small pair: SD 2.1's and SD-Turbo's UNet layout (4 levels, 2 layers a
  level, cross-attention in the first 3, the same heads) and the SD VAE's layout (4 levels, 2 layers),
  every width divided by `--width-divisor` (4: UNet 80-320 channels, VAE 32-128), at `--latent-size`
  px, so that the UNet, VAE and their ratio keep SD's proportions, as where users run it.

Figures, for each pair:
- one EchoDistill iteration (`guarded_step`, as a run calls it) in teacher-only Custom Diffusion steps
  (same models, same batch: drawing and encoding the batch, the teacher's loss, its update), before the
  echo stage and in it. Each round times a teacher step, an iteration before the echo and one in it,
  back to back; a ratio is taken within each round, and the median of the rounds is reported with
  its spread, so drift in the machine's speed cancels;
- where an iteration goes: each of method.md's named phases (the trainer names them for
  torch.profiler), as fractions of the profiled iteration, times the median ratio;
- one-step student sampling against 25-step teacher sampling (DDIM + CFG), interleaved;
- each sampler's overhead over the bare network calls it makes (text encoder, UNet, VAE decoder),
  interleaved: the 25-step teacher's and the one-step student's (in 3x as many short rounds).
Spreads are half the interquartile range of the rounds' ratios (half the range below four rounds).

One thread by default (`--threads`): a small shared machine gives steadier ratios on one.

Usage: python bench/speed.py [--size 32] [--batch 4] [--repeats 7] [--latent-size 128] [--pairs pixel latent]
                             [--color-space image|latent_preview] [--pixel-networks teacher|bundled]
The last line of output is one JSON object with the figures (pixel ones unprefixed, latent ones `latent_`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402

from echodistill_core.lab.demo import demo_concept_images  # noqa: E402
from echodistill_core.recipe import Pair, plan_run  # noqa: E402
from echodistill_core.families import FAMILIES  # noqa: E402
from echodistill_core.models import DiffusionModel  # noqa: E402
from echodistill_core.sampling import generate_student, generate_teacher, initial_noise, timesteps_for  # noqa: E402
from echodistill_core.schedule import NoiseSchedule  # noqa: E402
from echodistill_core.lab.tiny import TINY_TEXT_WIDTH, tiny_networks, tiny_pair, tiny_text  # noqa: E402


# Timing.

def interleaved_seconds(functions: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Each function's time in each of `repeats` rounds; within a round they run back to back.

    The time is the CPU time of this process (`time.process_time`), not wall time: on a machine shared with
    other work a one-thread benchmark waits for a core at random moments, which wall time counts and CPU
    time does not (with 4 runs on 2 cores, wall-time ratios spread +-0.6 teacher steps between rounds)."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.process_time()
            function()
            times[name].append(time.process_time() - start)
    return times


def ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> tuple[float, float]:
    """The median over rounds of numerator / denominator within each round, and its spread: half the
    interquartile range of the rounds' ratios (half their range with fewer than four rounds)."""
    ratios = [a / b for a, b in zip(times[numerator], times[denominator])]
    if len(ratios) >= 4:
        low, _, high = statistics.quantiles(ratios, n=4)
    else:
        low, high = min(ratios), max(ratios)
    return statistics.median(ratios), (high - low) / 2


def phase_shares(iteration, repeats: int) -> dict[str, float]:
    """The fraction of an iteration spent in each phase the trainer names ("echodistill/..."), under
    torch.profiler; fractions, so that the profiler's own overhead cancels out. A phase that runs inside
    another (found from the events' times) is listed but not counted twice."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        for _ in range(repeats):
            iteration()
        total = time.perf_counter() - start
    events = [event for event in profiler.events() if event.name.startswith("echodistill/")]
    phases: dict[str, float] = {}
    nested: set[str] = set()
    for event in events:
        name = event.name.removeprefix("echodistill/")
        phases[name] = phases.get(name, 0.0) + event.time_range.elapsed_us() / 1e6
        if any(other is not event and other.name != event.name and other.time_range.start <= event.time_range.start
               and event.time_range.end <= other.time_range.end for other in events):
            nested.add(name)
    phases = dict(sorted(phases.items()))
    phases["other"] = max(0.0, total - sum(seconds for name, seconds in phases.items() if name not in nested))
    return {name: seconds / total for name, seconds in phases.items()}


# The two pairs.

def sd_proportioned_pair(image_size: int, divisor: int, seed: int = 0):
    """SD 2.1 (v) teacher and SD-Turbo (epsilon) student UNets and the SD VAE, from the bundled family
    configs with every width (and GroupNorm's group count) divided by `divisor`; a tiny text encoder."""
    def read(family: str, part: str, name: str = "config.json") -> dict:
        return json.loads((FAMILIES[family].config / part / name).read_text())

    def narrower(config: dict) -> dict:
        config = {key: value for key, value in config.items() if not key.startswith("_")}
        config["block_out_channels"] = [channels // divisor for channels in config["block_out_channels"]]
        config["norm_num_groups"] = config["norm_num_groups"] // divisor
        return config

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(narrower(read("sd2-768-v", "vae"))).eval().requires_grad_(False)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    models = []
    for family, name in (("sd2-768-v", "SD 2.1-proportioned teacher"), ("sd-turbo", "SD-Turbo-proportioned student")):
        config = narrower(read(family, "unet")) | {"cross_attention_dim": TINY_TEXT_WIDTH,
                                                   "sample_size": image_size // scale}
        unet = UNet2DConditionModel.from_config(config).eval().requires_grad_(False)
        schedule = NoiseSchedule.from_scheduler_config(read(family, "scheduler", "scheduler_config.json"))
        models.append(DiffusionModel(unet=unet, schedule=schedule, vae=vae, name=name))
    return models[0], models[1], tiny_text(seed)


def measure_pair(teacher, student, text, size: int, batch: int, repeats: int, color_space: str = "image",
                 networks=None) -> dict:
    # The run recipe's tiny run, with the paper's augmentation as an SD-size run has it: every photo new, so
    # every step encodes (the tiny preset's mirror images only would be encoded once and kept). `networks`:
    # the image networks (None: the base teacher's features for the discriminator and the feature loss).
    plan = plan_run(demo_concept_images(size), class_word="toy", preset="tiny", memory="unlimited", batch_size=batch,
                    steps=10**6, preview_every=0, color_space=color_space, augmentation="custom_diffusion",
                    networks=networks)
    trainer = plan.trainer(Pair(teacher, student, text))
    config, concept = plan.config, trainer.concept
    prompts = [f"a photo of a {concept.subject}"] * batch
    seeds = list(range(batch))
    echo_start = config.echo_start_step

    def teacher_step():  # a teacher-only Custom Diffusion step: draw, encode, the loss, the update
        sample = concept.sample(batch, trainer.generator)
        with torch.no_grad():
            z = teacher.encode(sample.images.to(teacher.device))
        mask = torch.nn.functional.interpolate(sample.masks, size=z.shape[-2:], mode="area")
        trainer.teacher_step(z, sample.prompts, torch.randn(z.shape, generator=trainer.generator), mask)

    def iteration(step: int):
        def run():
            trainer.step = step
            trainer.guarded_step()
        return run

    with trainer.applied():
        times = interleaved_seconds({"teacher step": teacher_step, "iteration": iteration(0),
                                     "echo iteration": iteration(echo_start)}, repeats)
        phases = phase_shares(iteration(0), max(1, repeats // 2))
        echo_phases = phase_shares(iteration(echo_start), max(1, repeats // 2))

        cond, uncond = text(prompts), text([""])
        noise = initial_noise(teacher, seeds)
        both = torch.cat([uncond.expand_as(cond), cond])
        last = torch.full((batch,), student.schedule.terminal_timestep)

        @torch.no_grad()
        def bare_teacher_calls():
            text(prompts), text([""])
            z = noise
            for timestep in timesteps_for(teacher, 25):
                z = teacher.unet(torch.cat([z, z]), torch.full((2 * batch,), timestep), both).sample[:batch]
            teacher.decode(z)

        @torch.no_grad()
        def bare_student_calls():
            c = text(prompts)
            student.decode(student.unet(noise, last, c).sample)

        def one_step():
            generate_student(student, text, prompts, seeds)

        # The one-step sampler against its bare calls, in short rounds of their own (many, as they are quick);
        # then the 25-step teacher against the one-step student and against its own bare calls.
        one_step_times = interleaved_seconds({"student 1 step": one_step, "bare student calls": bare_student_calls},
                                             3 * repeats)
        sampling = interleaved_seconds({
            "student 1 step": one_step,
            "teacher 25 steps": lambda: generate_teacher(teacher, text, prompts, seeds, steps=25),
            "bare teacher calls": bare_teacher_calls,
        }, repeats)

    before, before_spread = ratio(times, "iteration", "teacher step")
    echo, echo_spread = ratio(times, "echo iteration", "teacher step")
    echo_vs_before, echo_vs_before_spread = ratio(times, "echo iteration", "iteration")
    speedup, speedup_spread = ratio(sampling, "teacher 25 steps", "student 1 step")
    student_overhead, student_overhead_spread = ratio(one_step_times, "student 1 step", "bare student calls")
    teacher_overhead, teacher_overhead_spread = ratio(sampling, "teacher 25 steps", "bare teacher calls")
    echo_fraction = 1 - config.echo_start
    return {
        "iteration_vs_teacher_step": round((1 - echo_fraction) * before + echo_fraction * echo, 3),
        "iteration_vs_teacher_step_before_echo": round(before, 3),
        "iteration_vs_teacher_step_before_echo_spread": round(before_spread, 3),
        "iteration_vs_teacher_step_in_echo": round(echo, 3),
        "iteration_vs_teacher_step_in_echo_spread": round(echo_spread, 3),
        "echo_iteration_vs_iteration_before_echo": round(echo_vs_before, 3),
        "echo_iteration_vs_iteration_before_echo_spread": round(echo_vs_before_spread, 3),
        "one_step_speedup_vs_25_steps": round(speedup, 2),
        "one_step_speedup_vs_25_steps_spread": round(speedup_spread, 2),
        "one_step_sampler_overhead": round(student_overhead - 1, 4),
        "one_step_sampler_overhead_spread": round(student_overhead_spread, 4),
        "sampler_overhead": round(teacher_overhead - 1, 4),
        "sampler_overhead_spread": round(teacher_overhead_spread, 4),
        "phases_vs_teacher_step": {name: round(share * before, 3) for name, share in phases.items()},
        "echo_phases_vs_teacher_step": {name: round(share * echo, 3) for name, share in echo_phases.items()},
        "seconds": {name: statistics.median(values) for name, values in (times | one_step_times | sampling).items()},
        "setup": {"size": size, "batch": batch, "rounds": repeats, "in_pixel_space": teacher.in_pixel_space,
                  "color_space": color_space, "networks": plan.networks.describe(),
                  "teacher_parameters": sum(p.numel() for p in teacher.unet.parameters()),
                  "vae_parameters": sum(p.numel() for p in teacher.vae.parameters()) if teacher.vae else 0},
    }


def report(name: str, figures: dict) -> None:
    seconds = figures["seconds"]
    print(f"[{name}] {figures['setup']}")
    print(f"  teacher-only Custom Diffusion step   {seconds['teacher step'] * 1000:8.1f} ms (median)")
    print(f"  EchoDistill iteration, before echo   {seconds['iteration'] * 1000:8.1f} ms  "
          f"x{figures['iteration_vs_teacher_step_before_echo']} ± {figures['iteration_vs_teacher_step_before_echo_spread']}")
    print(f"  EchoDistill iteration, echo stage    {seconds['echo iteration'] * 1000:8.1f} ms  "
          f"x{figures['iteration_vs_teacher_step_in_echo']} ± {figures['iteration_vs_teacher_step_in_echo_spread']} "
          f"({figures['echo_iteration_vs_iteration_before_echo']} ± "
          f"{figures['echo_iteration_vs_iteration_before_echo_spread']} of the stage before)")
    print(f"  whole-run average                          x{figures['iteration_vs_teacher_step']}")
    print("  where an iteration goes, in teacher steps (before echo / echo stage):")
    for phase in figures["echo_phases_vs_teacher_step"]:
        print(f"    {phase:28} {figures['phases_vs_teacher_step'].get(phase, 0):6.2f} "
              f"{figures['echo_phases_vs_teacher_step'][phase]:6.2f}")
    print(f"  student 1 step {seconds['student 1 step'] * 1000:.1f} ms vs teacher 25 steps "
          f"{seconds['teacher 25 steps'] * 1000:.1f} ms: {figures['one_step_speedup_vs_25_steps']}x "
          f"± {figures['one_step_speedup_vs_25_steps_spread']} faster")
    print(f"  sampler overhead over bare network calls: one-step {figures['one_step_sampler_overhead']:.2%} "
          f"± {figures['one_step_sampler_overhead_spread']:.2%}, 25-step teacher {figures['sampler_overhead']:.2%} "
          f"± {figures['sampler_overhead_spread']:.2%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=32, help="image size in px of the pixel-space pair")
    parser.add_argument("--latent-size", type=int, default=128, help="image size in px of the latent pair")
    parser.add_argument("--width-divisor", type=int, default=4, help="the latent pair's widths: SD's divided by this")
    parser.add_argument("--batch", type=int, default=4, help="the pixel pair's batch")
    parser.add_argument("--latent-batch", type=int, default=2, help="the latent pair's batch (the paper's)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", nargs="+", default=["pixel", "latent"], choices=("pixel", "latent"))
    parser.add_argument("--color-space", default="image", choices=("image", "latent_preview"),
                        help="the colour loss's input: the decoded images (the paper's) or the latents' colour preview")
    parser.add_argument("--pixel-networks", default="teacher", choices=("teacher", "bundled"),
                        help="the pixel pair's discriminators and feature network: the base teacher's features, or "
                             "the bundled pair's own (the teacher's features and the tiny image network)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    if "pixel" in args.pairs:
        torch.manual_seed(0)
        teacher, student, text = tiny_pair("v_prediction", "sample", image_size=args.size)
        networks = tiny_networks() if args.pixel_networks == "bundled" else None
        results["pixel"] = measure_pair(teacher, student, text, args.size, args.batch, args.repeats, args.color_space,
                                        networks)
        report("pixel", results["pixel"])
    if "latent" in args.pairs:
        teacher, student, text = sd_proportioned_pair(args.latent_size, args.width_divisor)
        results["latent"] = measure_pair(teacher, student, text, args.latent_size, args.latent_batch, args.repeats,
                                         args.color_space)
        report("latent", results["latent"])
    figures = dict(results.get("pixel", {}))
    for key, value in results.get("latent", {}).items():
        figures[f"latent_{key}"] = value
    figures["threads"] = torch.get_num_threads()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
