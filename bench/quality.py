"""Does EchoDistill personalize the one-step student better than the obvious alternatives?

Five methods, the same models, concept, optimisation steps and seed:
1. Textual Inversion on the student alone;
2. Custom Diffusion (the diffusion loss) directly on the one-step student;
3. Custom Diffusion on the teacher alone, then the plain student with the learned token;
4. EchoDistill without the echo stage;
5. full EchoDistill.
Each student is judged in ONE step by `echodistill_core.evaluation` (calibrated fidelity: 0 the untouched
student, 1 the concept's own held-out images; recognition where the world draws the concept; silhouette,
prompt fidelity, quality kept); the teachers that trained (methods 3-5) in 25 steps.

    python bench/quality.py                       # the bundled tiny models and the demo concept
    python bench/quality.py --concept photos/ --class-word toy --prompts prompts.txt --steps 300
    python bench/quality.py --seeds 0 1 2          # each figure the mean of three training seeds
    python bench/quality.py --concepts heart/pink star/yellow ring/green --methods echodistill
                                                   # world-drawn concepts, and the cross-concept matrix

The prompt file holds lines such as "a {} on teal | background=teal" ({} is the subject). Sample grids
(PNG, one row per concept prompt, one column per seed) are written to --out next to `results.json`:
the concept's images, the untouched student's and teacher's samples, and every trained model's.
Output: a markdown table, then one JSON line with every figure: `{"methods": {name: the 1-step
student's metrics and training seconds}, "teacher": {name: the 25-step teacher's metrics, for the
methods that train it}, "per_seed": {name: [each seed's run]}, "grids": {...}}`; with several seeds the
figures are means, with "<metric>_sd". With --concepts, those keys are the first concept's, "concepts"
holds every concept's, and "cross_concept" each method's matrix: the students' concept-prompt samples of
each concept scored against every concept's images ("score"), and calibrated per column ("calibrated").
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
from echodistill_core import world  # noqa: E402
from echodistill_core.demo import (  # noqa: E402
    DEMO_CLASS_WORD, DEMO_CONCEPT, DEMO_TOKEN, default_models, rendered_concept_images,
)
from echodistill_core.evaluation import (  # noqa: E402
    CONCEPT_PROMPTS, EvaluationSet, calibrate, concept_score, evaluate, matrix_table, own_score, read_prompt_file,
    samplers, save_grid, untouched_samples,
)
from echodistill_core.judge import comfy_to_world, load_judge  # noqa: E402
from echodistill_core.personalization import Personalization  # noqa: E402
from echodistill_core.trainer import EchoDistillTrainer  # noqa: E402

METHODS = BASELINES + ("echodistill_no_echo", "echodistill")
TEACHER_TRAINED = ("teacher_only", "echodistill_no_echo", "echodistill")  # their 25-step teachers are judged too
METRICS = ("calibrated_fidelity", "recognition", "recognition_shape", "concept_score", "concept_fidelity",
           "concept_silhouette", "prompt_fidelity", "kept_accuracy", "kept_fd")


def drawn_concept(text: str) -> dict:
    """"heart/pink" -> the world concept {shape, color, background black}, as the demo's heart."""
    shape, _, color = text.partition("/")
    if shape not in world.ALL_SHAPES or color not in world.COLORS:
        raise SystemExit(f"--concepts {text}: give shape/colour, a shape of {', '.join(world.ALL_SHAPES)} "
                         f"and a colour of {', '.join(world.COLORS)}")
    return dict(shape=shape, color=color, background="black")


def concept_images(folder: Path | None, size: int, drawn: dict | None = None) -> list[torch.Tensor]:
    """The concept's photos as [3, size, size] in 0..1 (the world-drawn concept when no folder is given)."""
    if folder is None:
        return rendered_concept_images(drawn or DEMO_CONCEPT, size)
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
    parser.add_argument("--concepts", nargs="+", metavar="SHAPE/COLOUR",
                        help="world-drawn concepts on black instead, e.g. heart/pink star/yellow; with two or more, "
                             "the cross-concept matrix")
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
    parser.add_argument("--out", type=Path, default=Path("out/quality"), help="folder for the sample grids")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.concept and args.concepts:
        raise SystemExit("give --concept (a folder of photos) or --concepts (world-drawn), not both")
    torch.set_num_threads(args.threads)

    teacher, student, text = default_models()
    size = teacher.image_size()
    config = PRESETS["tiny"].replace(token=args.token, class_word=args.class_word, steps=args.steps)
    config = config.replace(**dict(config_change(config, item) for item in args.set))
    prompts = read_prompt_file(args.prompts.read_text()) if args.prompts else CONCEPT_PROMPTS
    if args.concept:
        concepts = {args.concept.name: None}
    else:
        concepts = {text_: drawn_concept(text_) for text_ in args.concepts or ["/".join(
            (DEMO_CONCEPT["shape"], DEMO_CONCEPT["color"]))]}
    judge = load_judge()
    # The untouched models: the new token as it starts, nothing trained (the 0 of calibrated fidelity).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        start = Personalization.create(config, teacher, student, text)
    untouched_samplers = samplers(teacher, student, text, config.guidance_scale, start)

    results, grids, samples, setups = {}, {}, {}, {}
    for name, drawn in concepts.items():
        folder = args.out / name.replace("/", "_")
        images = concept_images(args.concept, size, drawn)
        concept = ConceptDataset(images, config.token, config.class_word, size)
        evaluation = EvaluationSet(concept.subject, args.seeds_per_prompt, args.plain, prompts, drawn)
        references = torch.stack(images) * 2 - 1
        untouched = {role: untouched_samples(sample, evaluation) for role, sample in untouched_samplers.items()
                     if role == "student" or set(args.methods) & set(TEACHER_TRAINED)}
        grids[name] = {"concept": str(save_grid(references, folder / "concept.png", columns=len(references))),
                       **{f"untouched {role}": str(save_grid(value.concept, folder / f"untouched_{role}.png",
                                                               columns=args.seeds_per_prompt))
                          for role, value in untouched.items()}}
        setups[name] = (references, evaluation, untouched)
        runs: dict[str, list[dict]] = {method: [] for method in args.methods}
        samples[name] = {}
        for seed in args.seeds:
            for method in args.methods:
                run, student_samples = personalize_and_evaluate(
                    method, teacher, student, text, concept, config.replace(seed=seed), references, evaluation,
                    judge, untouched, folder / f"{method}_seed{seed}")
                runs[method].append(run)
                grids[name].update(run.pop("grids"))
                samples[name].setdefault(method, []).append(student_samples)
                print(f"{name}, {method}, seed {seed}: {run}", file=sys.stderr, flush=True)
        results[name] = {"runs": runs, "means": {method: mean_run(method_runs) for method, method_runs in runs.items()}}

    figures = {}
    for name, result in results.items():
        if len(results) > 1:
            print(f"\n{name}:")
        print(table(result["means"], len(args.seeds)))
        figures[name] = {
            "methods": {method: dict(mean["student"], seconds=mean["seconds"])
                        for method, mean in result["means"].items()},
            "teacher": {method: mean["teacher"] for method, mean in result["means"].items() if "teacher" in mean},
            "per_seed": result["runs"],
        }
    output = {"steps": config.steps, "seeds": args.seeds, "changes": args.set, **next(iter(figures.values())),
              "grids": grids}
    if len(concepts) > 1:
        output["concepts"] = figures
        output["cross_concept"] = {method: cross_concept(judge, {name: torch.cat(samples[name][method])
                                                                 for name in concepts}, setups)
                                   for method in args.methods}
        for method, matrices in output["cross_concept"].items():
            print(f"\n{method}, students' samples (rows) scored against each concept's images (columns):")
            print(matrix_table(matrices["score"]))
            print("calibrated per column (0: the untouched student, 1: the column concept's held-out images):")
            print(matrix_table(matrices["calibrated"]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(output, indent=2) + "\n")
    print(json.dumps(output))


def cross_concept(judge, samples: dict[str, torch.Tensor], setups: dict) -> dict[str, dict]:
    """The students' samples of each concept (rows) against each concept's images (columns): raw, and
    calibrated by the column concept's untouched student and own held-out images."""
    score, calibrated = {}, {}
    for row, images in samples.items():
        score[row], calibrated[row] = {}, {}
        for column, (references, evaluation, untouched) in setups.items():
            value = concept_score(judge, images, references)
            score[row][column] = value
            calibrated[row][column] = calibrate(value, concept_score(judge, untouched["student"].concept, references),
                                                own_score(judge, references, evaluation))
    return {"score": score, "calibrated": calibrated}


def personalize_and_evaluate(method, teacher, student, text, concept, config, references, evaluation, judge,
                             untouched, grid_stem: Path) -> tuple[dict, torch.Tensor]:
    """One method's run: its 1-step student's metrics and training seconds (and the 25-step teacher's if it
    trained one), the grids written, and the student's concept-prompt samples."""
    start = time.time()
    if method in BASELINES:
        personalization = personalize_one_model(method, teacher, student, text, concept, config)
    else:
        trainer = EchoDistillTrainer(teacher, student, text, concept, config.replace(echo=method == "echodistill"))
        trainer.train()
        personalization = trainer.personalization
    seconds = time.time() - start
    personalized = samplers(teacher, student, text, config.guidance_scale, personalization)
    grids = {}
    run = {"seconds": round(seconds, 1)}
    for role in ("student", "teacher") if method in TEACHER_TRAINED else ("student",):
        path = grid_stem.parent / f"{grid_stem.name}_{role}.png"
        run[role] = evaluate(personalized[role], references, evaluation, judge, untouched[role], grid=path)
        grids[f"{grid_stem.name} {role}"] = str(path)
    prompts, _, seeds = evaluation.concept()
    student_samples = comfy_to_world(personalized["student"](prompts, seeds))
    return dict(run, grids=grids), student_samples


def mean_run(runs: list[dict]) -> dict:
    """The mean of several seeds' runs, each model's metrics with their standard deviation as "<metric>_sd"."""
    result = {"seconds": round(statistics.fmean(run["seconds"] for run in runs), 1)}
    for model in ("student", "teacher"):
        if model in runs[0]:
            figures = {}
            for metric in METRICS:
                if metric not in runs[0][model]:
                    continue
                values = [run[model][metric] for run in runs]
                figures[metric] = statistics.fmean(values)
                if len(values) > 1:
                    figures[f"{metric}_sd"] = statistics.pstdev(values)
            result[model] = figures
    return result


def table(results: dict[str, dict], seeds: int = 1) -> str:
    """Markdown: one row per method's 1-step student, then the 25-step teachers that trained; with several
    seeds, each figure is "mean ± standard deviation"."""
    metrics = [metric for metric in METRICS if metric in next(iter(results.values()))["student"]]

    def cell(figures: dict, metric: str) -> str:
        if seeds == 1:
            return f"{figures[metric]:.3f}"
        return f"{figures[metric]:.3f} ± {figures[metric + '_sd']:.3f}"

    header = "| model | " + " | ".join(metrics) + " | train s |\n|" + " --- |" * (len(metrics) + 2)
    rows = [f"| {method} student, 1 step | " + " | ".join(cell(result["student"], m) for m in metrics)
            + f" | {result['seconds']} |" for method, result in results.items()]
    rows += [f"| {method} teacher, 25 steps | " + " | ".join(cell(result["teacher"], m) for m in metrics) + " | |"
             for method, result in results.items() if "teacher" in result]
    return "\n".join([header, *rows])


if __name__ == "__main__":
    main()
