"""Measure how well the bundled tiny teacher and student follow prompts of the world.

Per attribute accuracy (shape by the judge; colour, size, background from pixels) and the Fréchet
distance of judge embeddings to rendered world images, for the teacher (DDIM, CFG) at one or more
guidance scales and for the one-step student.

    python tools/evaluate_tiny.py --prompts 200 --guidance 3 7.5
    python tools/evaluate_tiny.py --pair latent     # the latent pair (a tiny VAE, an epsilon student)
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

from echodistill_core.config import TEACHER_SAMPLE_STEPS, TINY_TEACHER_GUIDANCE  # noqa: E402
from echodistill_core.lab import world  # noqa: E402
from echodistill_core.lab.judge import attribute_accuracy, comfy_to_world, frechet_distance, load_judge  # noqa: E402
from echodistill_core.loading import load_diffusers_folder  # noqa: E402
from echodistill_core.sampling import generate_student, generate_teacher  # noqa: E402


def report(name: str, images: torch.Tensor, attributes: list[dict], judge, references, seconds: float) -> None:
    images = comfy_to_world(images)
    accuracy = attribute_accuracy(images, attributes, judge)
    distance = frechet_distance(judge, images, references)
    scores = " ".join(f"{key} {value:.3f}" for key, value in accuracy.items())
    print(f"{name}: {scores} | FD {distance:.2f} | {seconds:.0f}s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", choices=tuple(world.PAIRS), default="pixel", help="the bundled pair to measure")
    parser.add_argument("--teacher", help="a teacher folder instead of the pair's")
    parser.add_argument("--student", help="a student folder instead of the pair's")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--guidance", type=float, nargs="*", default=[TINY_TEACHER_GUIDANCE])
    parser.add_argument("--teacher-steps", type=int, default=TEACHER_SAMPLE_STEPS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pair_teacher, pair_student = world.PAIRS[args.pair]
    teacher_folder, student_folder = args.teacher or pair_teacher, args.student or pair_student

    judge = load_judge()
    prompts, attributes = world.evaluation_set(args.prompts)
    seeds = list(range(args.prompts))
    references, _ = world.sample_batch(args.prompts, torch.Generator().manual_seed(99))
    fresh, _ = world.sample_batch(args.prompts, torch.Generator().manual_seed(98))
    print(f"rendered images (the floor): FD {frechet_distance(judge, fresh, references):.2f}")
    if args.guidance:
        teacher, text = load_diffusers_folder(teacher_folder)
        for guidance in args.guidance:
            start = time.time()
            images = generate_teacher(teacher, text, prompts, seeds, args.teacher_steps, guidance)
            report(f"teacher {args.teacher_steps} steps CFG {guidance}", images, attributes, judge, references,
                   time.time() - start)
    if Path(student_folder).is_dir():
        student, text = load_diffusers_folder(student_folder)
        start = time.time()
        images = generate_student(student, text, prompts, seeds, steps=1)
        report("student 1 step", images, attributes, judge, references, time.time() - start)


if __name__ == "__main__":
    main()
