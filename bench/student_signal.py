"""Why a one-step student trained by EchoDistill draws my circle's band as a blob: the signal, or the student?

Reads a result trained on the bundled pixel pair with the demo concept (`make demo` writes
`out/demo/demo.safetensors`) and asks two questions, each answered from the pixels (`world.recognise_concept`):

1. **What is the student pulled toward?** The student step regresses the student's sample onto the
   teacher's refinement of it: re-noised at t', denoised in ONE guided evaluation, weighted by abar_t'
   (`losses.teacher_target`, with the run's shared noise). For the result's own student and several t',
   how many of those targets show the concept, and how far each is from the student's sample.
2. **Can the student hold the concept at all?** Fresh K/V copies on the student (the same parameters
   EchoDistill trains), regressed in one step directly onto the result's teacher's own 25-step samples
   of the concept prompts (noise to sample, as `tools/distill_tiny_student.py` distils). If this student
   draws the concept, its K/V copies can say it, and what EchoDistill lacks is the signal.

    python -m echodistill_core demo                  # once: out/demo/demo.safetensors
    python bench/student_signal.py                   # about 6 min on one core
    python bench/student_signal.py --result run.safetensors --pairs 96 --steps 600

Output: the figures, a grid (`--out`: the targets by t', the teacher's samples and the regressed
student's), then one JSON line: `{"targets": {t': {"weight", "recognised", "distance"}}, "student":
{"recognised"}, "teacher_samples": {"recognised"}, "regressed_student": {"recognised", "circles"}}`
(recognised as fractions).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from echodistill_core import losses  # noqa: E402
from echodistill_core.lab import world  # noqa: E402
from echodistill_core.lab.demo import DEMO_CONCEPT, DEMO_TOKEN, DEMO_CLASS_WORD, default_models  # noqa: E402
from echodistill_core.lab.evaluation import save_grid  # noqa: E402
from echodistill_core.personalization import Personalization  # noqa: E402
from echodistill_core.sampling import generate_teacher, initial_noise, student_sample  # noqa: E402

BACKGROUNDS = tuple(world.BACKGROUNDS)


def prompts(count: int) -> list[str]:
    return [f"a {DEMO_TOKEN} {DEMO_CLASS_WORD} on {BACKGROUNDS[index % len(BACKGROUNDS)]}" for index in range(count)]


def recognised(images: torch.Tensor) -> float:
    return sum(item["look"] for item in world.recognise_concept(images.clamp(-1, 1), DEMO_CONCEPT)) / len(images)


def targets_by_noise_level(result: Personalization, teacher, student, text, levels, count: int, guidance: float):
    """The student's samples and the teacher's one-evaluation refinements of them at each t' (shared noise)."""
    names = prompts(count)
    with torch.no_grad(), result.applied(text, teacher=teacher, student=student):
        c, uncond = text(names), text([""] * count)
        eps = initial_noise(student, list(range(count)))
        x_s = student_sample(student, c, eps, 1)
        rows, figures = [x_s], {}
        for level in levels:
            t = torch.full((count,), level, dtype=torch.long)
            x_T, weight = losses.teacher_target(teacher, x_s, c, uncond, eps, t, guidance)
            figures[level] = dict(weight=round(weight[0].item(), 3), recognised=recognised(x_T),
                                  distance=round((x_T - x_s).pow(2).mean().item(), 4))
            rows.append(x_T)
    return recognised(x_s), figures, torch.cat(rows)


def regressed_student(result: Personalization, teacher, student, text, pairs: int, steps: int, lr: float,
                      batch: int, guidance: float):
    """Fresh student K/V copies regressed in one step onto the result's teacher's 25-step samples: those
    samples, the regressed student's on held-out seeds, and the share of those recognised and of circles."""
    fresh = Personalization.create(result.config, teacher, student, text)
    fresh.teacher_adapters.load_state_dict(result.teacher_adapters.state_dict())
    fresh.token.vector.data.copy_(result.token.vector.data)
    names, seeds = prompts(pairs), list(range(1000, 1000 + pairs))
    with torch.no_grad(), fresh.applied(text, teacher=teacher):
        samples = torch.cat([generate_teacher(teacher, text, names[i:i + 16], seeds[i:i + 16], guidance_scale=guidance)
                             for i in range(0, pairs, 16)]).permute(0, 3, 1, 2) * 2 - 1
    noise = initial_noise(student, seeds)
    parameters = list(fresh.student_adapters.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=result.config.weight_decay)
    generator = torch.Generator().manual_seed(0)
    last = torch.full((batch,), student.schedule.num_train_timesteps - 1, dtype=torch.long)
    with fresh.applied(text, student=student):
        c = text(names).detach()
        for _ in range(steps):
            index = torch.randint(0, pairs, (batch,), generator=generator)
            loss = 0.5 * (student.predict_x0(noise[index], last, c[index]) - samples[index]).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, result.config.grad_clip)
            optimizer.step()
        with torch.no_grad():  # held-out seeds
            drawn = student_sample(student, text(prompts(24)), initial_noise(student, list(range(24))), 1)
    readings = world.recognise_concept(drawn.clamp(-1, 1), DEMO_CONCEPT)
    share = sum(item["look"] for item in readings) / len(readings)
    circles = sum(item["shape"] == DEMO_CONCEPT["shape"] for item in readings) / len(readings)
    return samples, drawn, share, circles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--result", type=Path, default=Path("out/demo/demo.safetensors"),
                        help="a result trained on the bundled pixel pair with the demo concept")
    parser.add_argument("--levels", type=int, nargs="+", default=[50, 200, 400, 600, 800, 950], help="the t' read")
    parser.add_argument("--count", type=int, default=8, help="student samples whose targets are read")
    parser.add_argument("--pairs", type=int, default=96, help="teacher samples the student is regressed onto")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("out/student_signal.png"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not args.result.is_file():
        raise SystemExit(f"{args.result} is not there: run `python -m echodistill_core demo` first, or give --result")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.time()
    teacher, student, text = default_models()
    result = Personalization.load(args.result, teacher, student, text)
    guidance = result.config.guidance_scale

    own, targets, target_rows = targets_by_noise_level(result, teacher, student, text, args.levels, args.count,
                                                       guidance)
    print(f"the result's student: {own:.0%} of {args.count} samples recognised")
    for level, figures in targets.items():
        print(f"t' {level:>4}: weight {figures['weight']:.3f}, targets recognised {figures['recognised']:.0%}, "
              f"mean squared distance to the student's sample {figures['distance']:.4f}")
    samples, drawn, regressed_share, circles = regressed_student(result, teacher, student, text, args.pairs,
                                                                 args.steps, args.lr, args.batch, guidance)
    teacher_share = recognised(samples)
    print(f"the teacher's 25-step samples: {teacher_share:.0%} of {args.pairs} recognised")
    print(f"a student regressed onto them ({args.steps} steps): {regressed_share:.0%} of {len(drawn)} held-out "
          f"samples recognised, circles {circles:.0%}")
    save_grid(torch.cat([target_rows, samples[:args.count], drawn[:args.count]]).clamp(-1, 1), args.out,
              columns=args.count)
    print(f"grid: {args.out} (rows: the student's samples, their targets by t', the teacher's samples, the "
          f"regressed student's) in {time.time() - start:.0f} s")
    print(json.dumps({"targets": {str(level): figures for level, figures in targets.items()},
                      "student": {"recognised": own}, "teacher_samples": {"recognised": teacher_share},
                      "regressed_student": {"recognised": regressed_share, "circles": circles},
                      "grid": str(args.out)}))


if __name__ == "__main__":
    main()
