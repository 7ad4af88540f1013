"""Speed of EchoDistill on the tiny models, as ratios that carry over between machines.

- one EchoDistill iteration / one teacher-only Custom Diffusion step (same models, same batch), and
  where an iteration's time goes: each of method.md's five steps (the trainer names them for
  torch.profiler) in teacher-step units;
- one-step student sampling against 25-step teacher sampling (DDIM + CFG);
- the sampler's overhead over the bare network calls it makes.

Usage: python bench/speed.py [--size 32] [--batch 4] [--repeats 10]
The last line of output is one JSON object with the figures.
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

from echodistill_core.config import PRESETS  # noqa: E402
from echodistill_core.data import ConceptDataset  # noqa: E402
from echodistill_core.demo import demo_concept_images  # noqa: E402
from echodistill_core.sampling import generate_student, generate_teacher, initial_noise, timesteps_for  # noqa: E402
from echodistill_core.tiny import tiny_pair  # noqa: E402
from echodistill_core.trainer import EchoDistillTrainer  # noqa: E402


def median_seconds(function, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_median_seconds(first, second, repeats: int) -> tuple[float, float]:
    first(), second()
    times = ([], [])
    for _ in range(repeats):
        for function, bucket in zip((first, second), times):
            start = time.perf_counter()
            function()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def phase_shares(iteration, repeats: int) -> dict[str, float]:
    """The fraction of an iteration spent in each phase the trainer names ("echodistill/..."), under
    torch.profiler; fractions, so that the profiler's own overhead cancels out."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        for _ in range(repeats):
            iteration()
        total = time.perf_counter() - start
    phases = {event.key.removeprefix("echodistill/"): event.cpu_time_total / 1e6
              for event in profiler.key_averages() if event.key.startswith("echodistill/")}
    phases = dict(sorted(phases.items()))
    nested = phases.get("echo samples", 0.0)  # inside "1 teacher step"
    phases["other"] = max(0.0, total - sum(phases.values()) + nested)
    return {name: seconds / total for name, seconds in phases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=32, help="image size in px (pixel-space tiny models)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher, student, text = tiny_pair("v_prediction", "sample", image_size=args.size)
    config = PRESETS["tiny"].replace(class_word="toy", batch_size=args.batch, steps=10**6, preview_every=0)
    concept = ConceptDataset(demo_concept_images(args.size), config.token, config.class_word, args.size)
    trainer = EchoDistillTrainer(teacher, student, text, concept, config)
    prompts = [f"a photo of a {concept.subject}"] * args.batch
    seeds = list(range(args.batch))

    with trainer.applied():
        batch = concept.sample(args.batch, trainer.generator)
        z, mask = batch.images, batch.masks
        eps = torch.randn_like(z)
        teacher_step = median_seconds(lambda: trainer._teacher_step(z, batch.prompts, eps, mask), args.repeats)
        iteration = median_seconds(trainer.train_step, args.repeats)
        phases = phase_shares(trainer.train_step, args.repeats)
        trainer.step = config.echo_start_step  # the last quarter of a run adds the echo
        echo_iteration = median_seconds(trainer.train_step, args.repeats)
        echo_phases = phase_shares(trainer.train_step, args.repeats)
        student_sampling = median_seconds(lambda: generate_student(student, text, prompts, seeds), args.repeats)
        cond, uncond = text(prompts), text([""])
        noise = initial_noise(teacher, seeds)
        both = torch.cat([uncond.expand_as(cond), cond])

        @torch.no_grad()
        def bare_teacher_calls():
            text(prompts), text([""])
            for timestep in timesteps_for(teacher, 25):
                teacher.unet(torch.cat([noise, noise]), torch.full((2 * args.batch,), timestep), both)

        # Interleaved, so that drift in the machine's speed hits both alike.
        teacher_sampling, bare = paired_median_seconds(
            lambda: generate_teacher(teacher, text, prompts, seeds, steps=25), bare_teacher_calls,
            max(5, args.repeats // 2))

    echo_fraction = 1 - config.echo_start
    mixed_iteration = (1 - echo_fraction) * iteration + echo_fraction * echo_iteration
    figures = {
        "iteration_vs_teacher_step": round(mixed_iteration / teacher_step, 3),
        "iteration_vs_teacher_step_before_echo": round(iteration / teacher_step, 3),
        "iteration_vs_teacher_step_in_echo": round(echo_iteration / teacher_step, 3),
        "one_step_speedup_vs_25_steps": round(teacher_sampling / student_sampling, 2),
        "sampler_overhead": round(teacher_sampling / bare - 1, 4),
        "phases_vs_teacher_step": {name: round(share * iteration / teacher_step, 3) for name, share in phases.items()},
        "echo_phases_vs_teacher_step": {name: round(share * echo_iteration / teacher_step, 3)
                                        for name, share in echo_phases.items()},
        "seconds": {"teacher_step": teacher_step, "iteration": iteration, "echo_iteration": echo_iteration,
                    "student_1_step": student_sampling, "teacher_25_steps": teacher_sampling,
                    "bare_25_teacher_calls": bare},
        "setup": {"size": args.size, "batch": args.batch, "threads": torch.get_num_threads(),
                  "teacher_parameters": sum(p.numel() for p in teacher.unet.parameters())},
    }
    print(f"teacher-only Custom Diffusion step   {teacher_step * 1000:8.1f} ms")
    print(f"EchoDistill iteration (before echo)  {iteration * 1000:8.1f} ms  "
          f"x{figures['iteration_vs_teacher_step_before_echo']}")
    print(f"EchoDistill iteration (echo stage)   {echo_iteration * 1000:8.1f} ms  "
          f"x{figures['iteration_vs_teacher_step_in_echo']}")
    print(f"whole-run average (echo last {echo_fraction:.0%})     x{figures['iteration_vs_teacher_step']}")
    print("where an iteration goes, in teacher steps (before echo / echo stage):")
    for name in echo_phases:
        print(f"  {name:28} {figures['phases_vs_teacher_step'].get(name, 0):6.2f} "
              f"{figures['echo_phases_vs_teacher_step'][name]:6.2f}")
    print(f"student 1 step {student_sampling * 1000:.1f} ms vs teacher 25 steps {teacher_sampling * 1000:.1f} ms: "
          f"{figures['one_step_speedup_vs_25_steps']}x faster")
    print(f"sampler overhead over bare network calls: {figures['sampler_overhead']:.2%}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
