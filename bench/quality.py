"""Does EchoDistill personalize the one-step student better than the obvious alternatives?

Five methods, the same models, concept, optimisation steps and seed:
1. Textual Inversion on the student alone;
2. Custom Diffusion (the diffusion loss) directly on the one-step student;
3. Custom Diffusion on the teacher alone, then the plain student with the learned token;
4. EchoDistill without the echo stage;
5. full EchoDistill.
Each student is judged in ONE step by `echodistill_core.lab.evaluation` (calibrated fidelity: 0 the untouched
student, 1 the concept's own held-out images; recognition where the world draws the concept, over all concept
prompts and apart over those that only change the background and those that also change the concept; silhouette,
prompt fidelity, quality kept); the teachers that trained (methods 3-5) in 25 steps.

    python bench/quality.py                       # the bundled tiny models and the demo concept, "my circle"
    python bench/quality.py --concept photos/ --class-word toy --prompts prompts.txt --steps 300
    python bench/quality.py --seeds 0 1 2          # each figure the mean of three training seeds
    python bench/quality.py --concepts circle/red/band/blue square/yellow/dot/white --methods echodistill
                                                   # world-drawn concepts, and the cross-concept matrix
    python bench/quality.py --students-only        # judge the 1-step students alone (much faster)
    python bench/quality.py --pair latent         # the latent pair: a tiny VAE, an epsilon one-step student

A world-drawn concept is SHAPE/COLOUR (a shape, heart and star included, in one colour) or
SHAPE/COLOUR/LOOK/COLOUR2: a shape the models know with its own look (`world.LOOKS`: "halves", a lower half
in COLOUR2; "dot", a dot in the middle; "band", a band across it), trained with the shape as class word.
Drawn concepts are captioned in the world's words, as the demo's: "a <mine> circle on black".

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
import ast
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from echodistill_core.lab.baselines import BASELINES, personalize_one_model  # noqa: E402
from echodistill_core.config import PRESETS  # noqa: E402
from echodistill_core.data import center_square, read_images, to_tensor  # noqa: E402
from echodistill_core.image_networks import RunNetworks  # noqa: E402
from echodistill_core.lab import world  # noqa: E402
from echodistill_core.lab.demo import (  # noqa: E402
    DEMO_CLASS_WORD, DEMO_CONCEPT, DEMO_TOKEN, default_models, rendered_concept_captions, rendered_concept_images,
)
from echodistill_core.lab.evaluation import (  # noqa: E402
    CONCEPT_PROMPTS, EvaluationSet, calibrate, concept_score, evaluate, matrix_table, own_score, read_prompt_file,
    samplers, save_grid, untouched_samples,
)
from echodistill_core.lab.judge import comfy_to_world, load_judge  # noqa: E402
from echodistill_core.personalization import Personalization  # noqa: E402
from echodistill_core.recipe import plan_config, plan_run  # noqa: E402
from echodistill_core.lab.tiny import bundled_pair  # noqa: E402
from echodistill_core.trainer import EchoDistillTrainer  # noqa: E402

METHODS = BASELINES + ("echodistill_no_echo", "echodistill")
TEACHER_TRAINED = ("teacher_only", "echodistill_no_echo", "echodistill")  # their 25-step teachers are judged too
METRICS = ("calibrated_fidelity", "recognition", "recognition_context_only", "recognition_concept_changed",
           "recognition_shape", "concept_score", "concept_fidelity", "concept_silhouette", "prompt_fidelity",
           "kept_accuracy", "kept_fd")


def drawn_concept(text: str) -> dict:
    """"heart/pink" -> the world concept {shape, color, background black};
    "circle/red/halves/blue" -> a circle with a red upper and a blue lower half (a look of `world.LOOKS`)."""
    shape, color, *look = text.split("/")
    if (shape not in world.ALL_SHAPES or color not in world.COLORS or len(look) not in (0, 2)
            or look and (look[0] not in world.LOOKS or look[1] not in world.COLORS)):
        raise SystemExit(f"--concepts {text}: give shape/colour or shape/colour/look/colour, a shape of "
                         f"{', '.join(world.ALL_SHAPES)}, colours of {', '.join(world.COLORS)} and a look of "
                         f"{', '.join(world.LOOKS)}")
    return dict(shape=shape, color=color, background="black", **(dict(look=look[0], color2=look[1]) if look else {}))


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
    if isinstance(current, tuple):  # renoise_timesteps=400,999
        return key, tuple(type(current[0])(part) for part in value.strip("()").split(","))
    return key, type(current)(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", type=Path, help="folder of concept images (default: the demo concept)")
    parser.add_argument("--concepts", nargs="+", metavar="SHAPE/COLOUR[/LOOK/COLOUR2]",
                        help="world-drawn concepts on black instead, e.g. circle/red/halves/blue heart/pink; with two "
                             "or more, the cross-concept matrix")
    parser.add_argument("--class-word", help=f"default: {DEMO_CLASS_WORD!r}; for --concepts with a look, their shape "
                                             "(the kind the models know: \"my circle\")")
    parser.add_argument("--token", default=DEMO_TOKEN)
    parser.add_argument("--pair", choices=tuple(world.PAIRS), default="pixel",
                        help="the bundled pair: pixel, or latent (VAE, decoded colour loss, image discriminator)")
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
    parser.add_argument("--merge", type=Path, nargs="+", metavar="FOLDER_OR_LOG",
                        help="combine runs made apart (other seeds, methods or concepts, e.g. run in parallel) into "
                             "one table and JSON line, written to --out; trains nothing. Each is a folder with a "
                             "results.json, or the saved stderr of a run stopped early: the runs it finished (their "
                             "steps are taken to be --steps)")
    parser.add_argument("--caption-alternatives", action="store_true",
                        help="caption each drawn concept's photos in several true ways, one drawn at each use (\"a "
                             "<mine> circle on black | a big <mine> circle on black | ...\"), not one")
    parser.add_argument("--students-only", action="store_true",
                        help="judge the 1-step students only (25-step teacher samples cost most of an evaluation)")
    args = parser.parse_args()
    if args.concept and args.concepts:
        raise SystemExit("give --concept (a folder of photos) or --concepts (world-drawn), not both")
    if args.merge:
        return merge(args.merge, args.out, args.steps)
    torch.set_num_threads(args.threads)

    teacher, student, text = default_models() if args.pair == "pixel" else bundled_pair(args.pair)
    size = teacher.image_size()
    if args.concept:
        concepts = {args.concept.name: None}
    else:
        concepts = {text_: drawn_concept(text_) for text_ in args.concepts or ["/".join(
            DEMO_CONCEPT[key] for key in ("shape", "color", "look", "color2") if key in DEMO_CONCEPT)]}
    # The run recipe's run of the bundled tiny models (the tiny preset), with --set's changes.
    settings = dict(token=args.token, steps=args.steps)
    settings.update(config_change(plan_config(tiny=True, **settings)[0], item) for item in args.set)
    config, _ = plan_config(tiny=True, **settings)
    prompts = read_prompt_file(args.prompts.read_text()) if args.prompts else CONCEPT_PROMPTS
    judged_teachers = () if args.students_only else TEACHER_TRAINED
    judge = load_judge()

    results, grids, samples, setups = {}, {}, {}, {}
    for name, drawn in concepts.items():
        folder = args.out / name.replace("/", "_")
        images = concept_images(args.concept, size, drawn)
        class_word = args.class_word or (drawn["shape"] if drawn and drawn.get("look") else DEMO_CLASS_WORD)
        captions = rendered_concept_captions(drawn, f"{args.token} {class_word}", len(images),
                                             alternatives=args.caption_alternatives) if drawn else None
        plan = plan_run(images, tiny=True, captions=captions, **dict(settings, class_word=class_word))
        config, concept = plan.config, plan.dataset(student)
        evaluation = EvaluationSet(concept.subject, args.seeds_per_prompt, args.plain, prompts, drawn)
        references = torch.stack(images) * 2 - 1
        # The untouched models: the new token as it starts, nothing trained (the 0 of calibrated fidelity).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            start = Personalization.create(config, teacher, student, text)
        untouched_samplers = samplers(teacher, student, text, config.guidance_scale, start)
        untouched = {role: untouched_samples(sample, evaluation) for role, sample in untouched_samplers.items()
                     if role == "student" or set(args.methods) & set(judged_teachers)}
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
                    judge, untouched, folder / f"{method}_seed{seed}", judged_teachers, plan.networks)
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
    changes = args.set + (["caption_alternatives"] if args.caption_alternatives else [])
    output = {"pair": args.pair, "steps": config.steps, "seeds": args.seeds, "changes": changes,
              **next(iter(figures.values())), "grids": grids}
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


def merge(folders: list[Path], out: Path, steps: int) -> None:
    """One table and JSON line from several runs' results.json (or the runs a stopped one printed): each
    concept's runs of every method gathered, means and spreads taken again; and each method's cross-concept
    matrix averaged cell by cell over the runs that have it (runs of other seeds, or of some of the concepts:
    a cell is the mean of the runs that hold it, "runs" says how many)."""
    outputs = [json.loads((folder / "results.json").read_text()) if folder.is_dir() else finished_runs(folder, steps)
               for folder in folders]
    runs: dict[str, dict[str, list]] = {}
    grids: dict[str, dict] = {}
    for output in outputs:
        concepts = output.get("concepts") or {next(iter(output["grids"])): output}
        for name, figures in concepts.items():
            for method, method_runs in figures["per_seed"].items():
                runs.setdefault(name, {}).setdefault(method, []).extend(method_runs)
        for name, paths in output["grids"].items():
            grids.setdefault(name, {}).update(paths)
    seeds = sorted({seed for output in outputs for seed in output["seeds"]})
    figures = {}
    for name, concept_runs in runs.items():
        means = {method: mean_run(method_runs) for method, method_runs in concept_runs.items()}
        print(f"\n{name}:")
        print(table(means, min(len(method_runs) for method_runs in concept_runs.values())))
        figures[name] = {
            "methods": {method: dict(mean["student"], seconds=mean["seconds"]) for method, mean in means.items()},
            "teacher": {method: mean["teacher"] for method, mean in means.items() if "teacher" in mean},
            "per_seed": concept_runs,
        }
    steps = sorted({output["steps"] for output in outputs})
    output = {"steps": steps[0] if len(steps) == 1 else steps, "seeds": seeds,
              "changes": outputs[0]["changes"], "merged": [str(folder) for folder in folders],
              **next(iter(figures.values())), "grids": grids, "concepts": figures}
    matrices = merged_matrices([output["cross_concept"] for output in outputs if "cross_concept" in output])
    if matrices:
        output["cross_concept"] = matrices
        for method, merged in matrices.items():
            print(f"\n{method}, students' samples (rows) against each concept's images (columns), calibrated per "
                  f"column, each cell the mean of the runs that hold it (up to "
                  f"{max(n for row in merged['runs'].values() for n in row.values())}):")
            print(matrix_table(merged["calibrated"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(output, indent=2) + "\n")
    print(json.dumps(output))


def merged_matrices(runs: list[dict]) -> dict[str, dict]:
    """Each method's cross-concept matrices ("score", "calibrated") from several runs, averaged cell by cell
    over the runs that hold the cell, with "runs": how many did."""
    merged: dict[str, dict] = {}
    for run in runs:
        for method, matrices in run.items():
            cells = merged.setdefault(method, {})
            for kind in ("score", "calibrated"):
                for row, columns in matrices[kind].items():
                    for column, value in columns.items():
                        cells.setdefault((row, column), {}).setdefault(kind, []).append(value)
    result = {}
    for method, cells in merged.items():
        result[method] = {kind: {} for kind in ("score", "calibrated", "runs")}
        for (row, column), values in cells.items():
            for kind in ("score", "calibrated"):
                result[method][kind].setdefault(row, {})[column] = sum(values[kind]) / len(values[kind])
            result[method]["runs"].setdefault(row, {})[column] = len(values["score"])
    return result


def finished_runs(log: Path, steps: int) -> dict:
    """The runs a stopped run finished, read from its stderr ("<concept>, <method>, seed <n>: {...}" lines), as
    a results.json holds them; its grids are where that run wrote them."""
    per_seed: dict[str, list] = {}
    names, seeds = set(), set()
    for line in log.read_text().splitlines():
        found = re.fullmatch(r"(.+), (\w+), seed (\d+): (\{.*\})", line)
        if found:
            names.add(found[1])
            seeds.add(int(found[3]))
            per_seed.setdefault(found[2], []).append(ast.literal_eval(found[4]))
    if len(names) != 1:
        raise SystemExit(f"--merge {log}: no finished runs of one concept in it (found {sorted(names)})")
    return {"steps": steps, "seeds": sorted(seeds), "changes": [], "per_seed": per_seed, "grids": {names.pop(): {}}}


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
                             untouched, grid_stem: Path, judged_teachers, networks: RunNetworks
                             ) -> tuple[dict, torch.Tensor]:
    """One method's run: its 1-step student's metrics and training seconds (and the 25-step teacher's if it
    trained one), the grids written, and the student's concept-prompt samples. EchoDistill trains with
    `networks`, the plan's image networks (`recipe.plan_run`: the bundled pairs' own)."""
    start = time.time()
    if method in BASELINES:
        personalization = personalize_one_model(method, teacher, student, text, concept, config)
    else:
        trainer = EchoDistillTrainer(teacher, student, text, concept, config.replace(echo=method == "echodistill"),
                                     discriminator_backbones=networks.discriminators,
                                     feature_network=networks.feature)
        trainer.train()
        personalization = trainer.personalization
    seconds = time.time() - start
    personalized = samplers(teacher, student, text, config.guidance_scale, personalization)
    grids = {}
    run = {"seconds": round(seconds, 1)}
    for role in ("student", "teacher") if method in judged_teachers else ("student",):
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
                if any(metric not in run[model] for run in runs):  # runs from before a metric existed
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
