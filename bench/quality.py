"""Does EchoDistill personalize the one-step student better than the obvious alternatives?

Five methods, the same models, concept, optimisation steps and seed:
1. Textual Inversion on the student alone;
2. Custom Diffusion (the diffusion loss) directly on the one-step student;
3. Custom Diffusion on the teacher alone, then the plain student with the learned token;
4. EchoDistill without the echo stage;
5. full EchoDistill.
Each student is judged in ONE step by `echodistill_core.evaluation` (concept fidelity, silhouette,
prompt fidelity, quality kept); the teachers of 4 and 5 in 25 steps, to show what the echo does.

    python bench/quality.py                       # the bundled tiny models and the demo concept
    python bench/quality.py --concept photos/ --class-word toy --prompts prompts.txt --steps 300
    python bench/quality.py --seeds 0 1 2          # each figure the mean of three training seeds

The prompt file holds lines such as "a {} on teal | background=teal" ({} is the subject). Output: a
markdown table, then one JSON line with every figure: `{"methods": {name: the 1-step student's metrics
and training seconds}, "teacher": {name: the 25-step teacher's metrics, for the two EchoDistill runs},
"per_seed": {name: [each seed's run]}}`; with several seeds the figures are means, with "<metric>_sd".
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

from echodistill_core.baselines import BASELINES, personalize_one_model  # noqa: E402
from echodistill_core.config import PRESETS  # noqa: E402
from echodistill_core.data import ConceptDataset, center_square, read_images, to_tensor  # noqa: E402
from echodistill_core.demo import DEMO_CLASS_WORD, DEMO_TOKEN, default_models, demo_concept_images  # noqa: E402
from echodistill_core.evaluation import (  # noqa: E402
    CONCEPT_PROMPTS, EvaluationSet, evaluate, plain_samples, read_prompt_file, samplers,
)
from echodistill_core.judge import load_judge  # noqa: E402
from echodistill_core.trainer import EchoDistillTrainer  # noqa: E402

METHODS = BASELINES + ("echodistill_no_echo", "echodistill")
METRICS = ("concept_fidelity", "concept_silhouette", "prompt_fidelity", "kept_accuracy", "kept_fd")


def concept_images(folder: Path | None, size: int) -> list[torch.Tensor]:
    """The concept's photos as [3, size, size] in 0..1 (the demo concept when no folder is given)."""
    if folder is None:
        return demo_concept_images(size)
    images = read_images(folder)
    if not images:
        raise SystemExit(f"no images in {folder}")
    squares = [center_square(to_tensor(image, index), size) for index, image in enumerate(images)]
    return [(square.clamp(-1, 1) + 1) / 2 for square in squares]


def config_change(config, item: str) -> tuple[str, object]:
    """"teacher_lr=3e-4" as ("teacher_lr", 0.0003), typed like the config's own value."""
    key, _, value = item.partition("=")
    if not hasattr(config, key):
        raise SystemExit(f"--set {item}: the config has no {key!r}")
    current = getattr(config, key)
    if isinstance(current, bool):
        return key, value.lower() in ("1", "true", "yes", "on")
    return key, type(current)(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", type=Path, help="folder of concept images (default: the demo heart)")
    parser.add_argument("--class-word", default=DEMO_CLASS_WORD)
    parser.add_argument("--token", default=DEMO_TOKEN)
    parser.add_argument("--prompts", type=Path, help="prompt file (default: the built-in concept prompts)")
    parser.add_argument("--steps", type=int, default=PRESETS["tiny"].steps)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="training seeds; with several, every figure is the mean over them (and its spread)")
    parser.add_argument("--seeds-per-prompt", type=int, default=8)
    parser.add_argument("--plain", type=int, default=64, help="plain world prompts for quality kept")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="change the tiny preset for every method, e.g. --set teacher_lr=3e-4 steps=200")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    teacher, student, text = default_models()
    size = teacher.image_size()
    images = concept_images(args.concept, size)
    config = PRESETS["tiny"].replace(token=args.token, class_word=args.class_word, steps=args.steps)
    config = config.replace(**dict(config_change(config, item) for item in args.set))
    concept = ConceptDataset(images, config.token, config.class_word, size)
    prompts = read_prompt_file(args.prompts.read_text()) if args.prompts else CONCEPT_PROMPTS
    evaluation = EvaluationSet(concept.subject, args.seeds_per_prompt, args.plain, prompts)
    judge, references = load_judge(), torch.stack(images) * 2 - 1
    untouched = {role: plain_samples(sample, evaluation)
                 for role, sample in samplers(teacher, student, text, config.guidance_scale).items()}

    runs: dict[str, list[dict]] = {method: [] for method in args.methods}
    for seed in args.seeds:
        for method in args.methods:
            run = personalize_and_evaluate(method, teacher, student, text, concept, config.replace(seed=seed),
                                           references, evaluation, judge, untouched)
            runs[method].append(run)
            print(f"{method}, seed {seed}: {run}", file=sys.stderr, flush=True)
    results = {method: mean_run(method_runs) for method, method_runs in runs.items()}

    print(table(results, len(args.seeds)))
    methods = {method: dict(result["student"], seconds=result["seconds"]) for method, result in results.items()}
    teachers = {method: result["teacher"] for method, result in results.items() if "teacher" in result}
    print(json.dumps({"steps": config.steps, "seeds": args.seeds, "changes": args.set, "methods": methods,
                      "teacher": teachers, "per_seed": runs}))


def personalize_and_evaluate(method, teacher, student, text, concept, config, references, evaluation, judge,
                             untouched) -> dict:
    """One method's run: its 1-step student's metrics and training seconds (and the 25-step teacher's)."""
    start = time.time()
    if method in BASELINES:
        personalization = personalize_one_model(method, teacher, student, text, concept, config)
    else:
        trainer = EchoDistillTrainer(teacher, student, text, concept, config.replace(echo=method == "echodistill"))
        trainer.train()
        personalization = trainer.personalization
    seconds = time.time() - start
    personalized = samplers(teacher, student, text, config.guidance_scale, personalization)
    run = {"student": evaluate(personalized["student"], references, evaluation, judge, untouched["student"]),
           "seconds": round(seconds, 1)}
    if method.startswith("echodistill"):
        run["teacher"] = evaluate(personalized["teacher"], references, evaluation, judge, untouched["teacher"])
    return run


def mean_run(runs: list[dict]) -> dict:
    """The mean of several seeds' runs, each model's metrics with their standard deviation as "<metric>_sd"."""
    result = {"seconds": round(statistics.fmean(run["seconds"] for run in runs), 1)}
    for model in ("student", "teacher"):
        if model in runs[0]:
            figures = {}
            for metric in METRICS:
                values = [run[model][metric] for run in runs]
                figures[metric] = statistics.fmean(values)
                if len(values) > 1:
                    figures[f"{metric}_sd"] = statistics.pstdev(values)
            result[model] = figures
    return result


def table(results: dict[str, dict], seeds: int = 1) -> str:
    """Markdown: one row per method's 1-step student, then the 25-step teachers with and without the echo;
    with several seeds, each figure is "mean ± standard deviation"."""
    def cell(figures: dict, metric: str) -> str:
        if seeds == 1:
            return f"{figures[metric]:.3f}"
        return f"{figures[metric]:.3f} ± {figures[metric + '_sd']:.3f}"

    header = "| model | " + " | ".join(METRICS) + " | train s |\n|" + " --- |" * (len(METRICS) + 2)
    rows = [f"| {method} student, 1 step | " + " | ".join(cell(result["student"], m) for m in METRICS)
            + f" | {result['seconds']} |" for method, result in results.items()]
    rows += [f"| {method} teacher, 25 steps | " + " | ".join(cell(result["teacher"], m) for m in METRICS) + " | |"
             for method, result in results.items() if "teacher" in result]
    return "\n".join([header, *rows])


if __name__ == "__main__":
    main()
