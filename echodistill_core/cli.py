"""`python -m echodistill_core {train,sample,evaluate,demo}`: EchoDistill from a terminal."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import fields
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from .lab import world
from .concept_queue import INTERRUPTED, QueuedConcept, check_queue, read_queue, spread_over_devices, train_queue
from .config import PRESETS, TEACHER_SAMPLE_STEPS, EchoDistillConfig
from .data import read_images
from .lab.demo import (DEMO_CLASS_WORD, DEMO_CONCEPT, DEMO_PROMPTS, DEMO_TOKEN, default_models, demo_captions,
                       demo_concept_images)
from .backbones import TEACHER_FEATURES
from .lab.evaluation import EvaluationSet, evaluate, samplers, untouched_samples
from .lab.evaluation import save_grid as save_sample_grid
from .image_networks import DISCRIMINATOR_SETS, FEATURE_NETWORKS, ImageNetworkFiles, choose_networks
from .lab.judge import load_judge
from .memory import MEMORY_PRESETS
from .paper_metrics import PAPER_SEEDS, evaluate_concept, load_judges, read_prompts
from .parallel import Shard, start_from_environment
from .personalization import Personalization
from .sampling import generate_student, generate_teacher
from .recipe import (DEFAULT_MEMORY, DEFAULT_PRECISION, DEFAULT_PRESET, PRECISION_HELP, PRECISIONS, PRESET_CHOICES,
                     Pair, RunPlan, check_pair_paths, frozen_dtype, is_bundled_tiny, load_pair, plan_run,
                     resolve_device)
from .safekeeping import check_output, is_echodistill_file, keep
from .lab.tiny import bundled_pair
from .trainer import EchoDistillTrainer, NonFiniteLossError, TrainingOutOfMemoryError

# Config fields the command line sets directly, with their help.
CONFIG_OPTIONS = {
    "steps": "optimisation steps",
    "batch_size": "images per step",
    "resolution": "training resolution in px (0: the student's native size, 512 for SD-Turbo)",
    "seed": "random seed; the same seed repeats a run exactly",
    "parameterisation": "custom_diffusion (the paper's K/V copies) or lora (less memory)",
    "lora_rank": "LoRA rank",
    "augmentation": "what each photo becomes: custom_diffusion (the paper's flips, pastes and crops), flip (mirror "
                    "images only: small images, the tiny preset's) or none",
    "teacher_lr": "teacher learning rate", "student_lr": "student learning rate",
    "token_lr": "token learning rate (0: the teacher's)", "discriminator_lr": "discriminator-head learning rate",
    "guidance_scale": "CFG scale of the teacher's target", "echo_start": "when the echo starts, fraction of steps",
    "echo_beta": "weight of the echo samples in the teacher's loss", "preview_every": "preview every N steps",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return {"train": _train, "sample": _sample, "evaluate": _evaluate, "demo": _demo}[args.command](args)
    except (ValueError, OSError, MemoryError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """Every command and option; the run's defaults are the recipe's (recipe.py), as the Train node's are."""
    parser = argparse.ArgumentParser(prog="python -m echodistill_core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="personalize a teacher/student pair on concept images")
    _add_model_options(train)
    train.add_argument("--images", type=Path, help="a folder of 3-20 concept images")
    train.add_argument("--token", default="<sks>", help="the new word for the concept")
    train.add_argument("--class-word", help="what the concept is, e.g. dog")
    train.add_argument("--concept", nargs=3, action="append", metavar=("FOLDER", "TOKEN", "CLASS_WORD"),
                       help="a concept of a queue (repeatable): trained one after another into the --out folder, "
                            "a finished one skipped and an interrupted one resumed when run again")
    train.add_argument("--queue", type=Path, help='a JSON list of concepts, [{"images": "photos/dog", '
                       '"token": "<my-dog>", "class_word": "dog"}, ...], trained as --concept')
    train.add_argument("--devices", nargs="+", metavar="DEVICE",
                       help="spread the queue's concepts over these devices (cuda:0 cuda:1 ...), one process each")
    train.add_argument("--initializer-word", default="", help="word the token starts from (default: the class word)")
    train.add_argument("--preset", choices=PRESET_CHOICES, default=DEFAULT_PRESET,
                       help="starting settings: paper (SD 2.1 + SD-Turbo), tiny (the bundled tiny models); auto "
                            "(the default) picks tiny for the bundled tiny models and paper for any other")
    presets = "; ".join(f"{preset.name}: {preset.summary}" for preset in MEMORY_PRESETS.values())
    train.add_argument("--memory", choices=list(MEMORY_PRESETS), default=DEFAULT_MEMORY,
                       help=f"fit the GPU's memory (SD 2.1 + SD-Turbo at 512 px; default {DEFAULT_MEMORY}; the "
                            f"bundled tiny models always run as unlimited). {presets}")
    train.add_argument("--no-echo", action="store_true", help="turn the echo stage off")
    unchosen = (f"neither chosen: {TEACHER_FEATURES} for both, and for the bundled tiny models also their own "
                "image network")
    train.add_argument("--discriminators", choices=list(DISCRIMINATOR_SETS),
                       help="; ".join(f"{name}: {what}" for name, what in DISCRIMINATOR_SETS.items()) + f"; {unchosen}")
    train.add_argument("--feature-network", choices=list(FEATURE_NETWORKS),
                       help="f of the feature loss. " + "; ".join(f"{n}: {w}" for n, w in FEATURE_NETWORKS.items())
                            + f"; {unchosen}")
    for name, what in (("clip-vision", "a CLIP vision file (ComfyUI's models/clip_vision)"),
                       ("ip-adapter", "an IP-Adapter file (models/ipadapter), e.g. ip-adapter_sd15.safetensors"),
                       ("dino", "DINO ViT-S/16: a transformers folder or weights file"),
                       ("dinov2", "DINOv2 ViT-L/14: a transformers folder or weights file")):
        train.add_argument(f"--{name}", type=Path, help=what)
    train.add_argument("--resume", type=Path, help="a training state saved by an interrupted run")
    train.add_argument("--out", required=True, type=Path,
                       help="where to write the result (.safetensors); for a queue, a folder")
    train.add_argument("--overwrite", action="store_true", help="replace an existing EchoDistill result at --out")
    train.add_argument("--save-every", type=_count, default=0, metavar="N",
                       help="every N steps keep a resumable state (<out>.state.safetensors) and the result so far")
    for name, help_text in CONFIG_OPTIONS.items():
        kind = {f.name: f.type for f in fields(EchoDistillConfig)}[name]
        train.add_argument(f"--{name.replace('_', '-')}", type={"int": int, "float": float}.get(kind, str),
                           help=help_text)

    sample = commands.add_parser("sample", help="draw images from a personalized result")
    _add_model_options(sample)
    sample.add_argument("--result", required=True, type=Path, help="a result written by train")
    sample.add_argument("--prompt", action="append", required=True, help="a prompt with the token (repeatable)")
    sample.add_argument("--seed", type=_seed, default=0, help="seed of the first image; the rest count up")
    sample.add_argument("--model", choices=("student", "teacher"), default="student",
                        help="student: one step; teacher: DDIM with CFG")
    sample.add_argument("--sample-steps", type=_sample_steps, default=0,
                        help=f"0: 1 for the student, {TEACHER_SAMPLE_STEPS} for the teacher; at most 1000")
    sample.add_argument("--out", required=True, type=Path, help="PNG file for the image grid")
    sample.add_argument("--overwrite", action="store_true", help="replace an existing PNG at --out")

    evaluate = commands.add_parser("evaluate", help="the paper's figures (CLIP-I, DINO, CLIP-T) of a result "
                                   "against its photos, beside the untouched model's")
    _add_model_options(evaluate)
    evaluate.add_argument("--result", required=True, type=Path, help="a result written by train")
    evaluate.add_argument("--images", required=True, type=Path, help="the concept's photos")
    evaluate.add_argument("--clip", type=Path, help="a whole CLIP model, for CLIP-I and CLIP-T (the paper's: "
                          "openai/clip-vit-large-patch14-336): a transformers folder or weights file; a clip_vision "
                          "file (image tower only) gives CLIP-I alone")
    evaluate.add_argument("--dino", type=Path, help="DINO or DINOv2 for the DINO figure (the paper's: DINOv2 "
                          "ViT-L/14, facebook/dinov2-large): a transformers folder or weights file")
    evaluate.add_argument("--prompts", type=Path, help="prompts, one a line, {} where the subject goes "
                          "(default: DreamBench's 25, its live subjects' for a dog or a cat)")
    evaluate.add_argument("--seeds", type=_seed, nargs="+", default=list(PAPER_SEEDS), help="seeds of every prompt")
    evaluate.add_argument("--model", choices=("student", "teacher"), default="student",
                          help=f"student: one step (the paper's figures); teacher: DDIM {TEACHER_SAMPLE_STEPS} steps "
                          "with CFG")
    evaluate.add_argument("--out", required=True, type=Path, help="a folder for scores.md, scores.json, grid.png")

    demo = commands.add_parser("demo", help="personalize the tiny default models to a demo concept")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    demo.add_argument("--steps", type=int, default=PRESETS["tiny"].steps, help="optimisation steps")
    demo.add_argument("--device", default="auto", help="auto, cpu or cuda")
    demo.add_argument("--pair", choices=tuple(world.PAIRS), default="pixel",
                      help="the bundled tiny pair: pixel (32 px images), or latent (a tiny VAE's latents and an "
                           "epsilon one-step student, as SD 2.1 and SD-Turbo)")

    return parser


def _count(text: str) -> int:
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give 0 (never) or a number of steps")
    return value


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _sample_steps(text: str) -> int:
    value = _whole_number(text)
    if not 0 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{value} is not a number of sampling steps; give 1 to 1000, or 0 for the "
                                         f"model's own (1 for the student, {TEACHER_SAMPLE_STEPS} for the teacher)")
    return value


def _seed(text: str) -> int:
    value = _whole_number(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{value} is not a seed; give a whole number from 0 to 2**63 - 1")
    return value


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, type=Path, help="the multi-step teacher: a diffusers folder or a checkpoint file")
    parser.add_argument("--student", required=True, type=Path, help="the one-step student: a diffusers folder or a checkpoint file")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", choices=list(PRECISIONS), default=DEFAULT_PRECISION, help=PRECISION_HELP)


def _load_pair(args) -> Pair:
    """The checked pair (recipe.load_pair): a multi-step student or a pair that cannot train together is refused."""
    return load_pair(args.teacher, args.student, precision=args.precision, device=args.device)


def plan_from_arguments(args, images) -> RunPlan:
    """The run `train`'s options ask for (recipe.plan_run), checked before any model loads; `images` None plans
    a queue's shared settings."""
    files = ImageNetworkFiles(args.clip_vision, args.ip_adapter, args.dino, args.dinov2)
    networks = None  # neither chosen: the recipe's default for the models (recipe.plan_run)
    if args.discriminators or args.feature_network:
        networks = choose_networks(args.discriminators or TEACHER_FEATURES, args.feature_network or TEACHER_FEATURES,
                                   files, dtype=frozen_dtype(args.precision, resolve_device(args.device)))
    settings = {name: getattr(args, name) for name in CONFIG_OPTIONS}
    tiny = is_bundled_tiny(args.teacher) and is_bundled_tiny(args.student)
    return plan_run(images, token=args.token, class_word=args.class_word, initializer_word=args.initializer_word,
                    preset=args.preset, memory=args.memory, tiny=tiny, networks=networks, echo=not args.no_echo,
                    **settings)


def _warn(plan: RunPlan, pair: Pair) -> None:
    for warning in plan.warnings(pair):
        print(f"warning: {warning}", file=sys.stderr)


def _train(args) -> int:
    check_pair_paths(args.teacher, args.student)  # one model as both, a multi-step student folder: before all else
    device = start_from_environment()  # under torchrun: one process per GPU, each batch shared (parallel.py)
    args.device = device or args.device
    concepts = [QueuedConcept(Path(folder), token, word) for folder, token, word in args.concept or []]
    concepts += read_queue(args.queue) if args.queue else []
    if concepts:
        if args.images or args.resume:
            raise ValueError("give either one concept (--images, --resume) or a queue (--concept, --queue): a queue "
                             "resumes each of its concepts by itself")
        check_queue(concepts, args.out)
        if args.devices:
            spread_over_devices(concepts, args.devices, partial(_train_queue, args))
            return 0
        return _train_queue(args, concepts)
    if args.images is None or args.class_word is None:
        raise ValueError("give the concept: --images and --class-word (or a queue: --concept or --queue)")
    # Everything that can be checked without the models is checked before they load.
    state_path = args.out.with_suffix(".state.safetensors")
    check_output(args.out, replace_own=args.overwrite or args.resume is not None)
    check_output(state_path, replace_own=True)  # a state of ours is superseded; another file never replaced
    if args.resume and not is_echodistill_file(args.resume):
        raise ValueError(f"{args.resume} is not an EchoDistill training state (or is damaged); give the "
                         "<out>.state.safetensors file an interrupted run wrote")
    plan = plan_from_arguments(args, args.images)
    pair = _load_pair(args)
    _warn(plan, pair)
    trainer = plan.trainer(pair)
    if args.resume:
        trainer.load_state(args.resume)
    if trainer.shard.main:
        print("\n".join(trainer.describe()))
    finished = run_with_progress(trainer, args.out, state_path, args.save_every)
    if finished and trainer.shard.main:
        print(f"result: {keep(trainer.personalization.save, args.out)}")
    return 0 if finished else 130


def _train_queue(args, concepts: list[QueuedConcept], device: str | None = None) -> int:
    """Train the queue's concepts one after another (on `device`, when the queue is spread over several)."""
    args.device = device or args.device
    plan = plan_from_arguments(args, None)  # each concept's photos and words: check_queue, train_queue
    pair = _load_pair(args)
    _warn(plan, pair)
    say = print if Shard.current().main else (lambda line: None)

    def run(trainer: EchoDistillTrainer, result: Path, state: Path) -> bool:
        say("\n".join(trainer.describe()))
        return run_with_progress(trainer, result, state, args.save_every)

    outcome = train_queue(concepts, args.out, pair.teacher, pair.student, pair.text, plan.config,
                          student_text=pair.student_text, networks=plan.networks, run=run, describe=say)
    return 130 if INTERRUPTED in outcome.values() else 0


def run_with_progress(trainer: EchoDistillTrainer, out: Path, state_path: Path, save_every: int = 0) -> bool:
    """Train with a terminal progress bar, keeping a resumable state and a usable result every
    `save_every` steps. On Ctrl-C, a non-finite loss, running out of memory or any other failure, the
    state of the last complete step is written (elsewhere if its place fails) and the message says
    where and how to resume."""
    bar = tqdm(total=trainer.config.steps, initial=trainer.step, unit="step", disable=not trainer.shard.main)
    keeping = keep if trainer.shard.main else _kept_elsewhere  # several processes: the first one writes

    def report(step):
        bar.update(1)
        bar.set_postfix(teacher=f"{step.losses['teacher']:.3f}", student=f"{step.losses['student']:.3f}")
        if save_every and step.step % save_every == 0 and step.step < step.total:
            keeping(trainer.save_state, state_path, stop_on_interrupt=True)
            keeping(trainer.personalization.save, out, stop_on_interrupt=True)

    try:
        trainer.train(callback=report)
    except KeyboardInterrupt:
        bar.close()
        kept = keeping(trainer.save_state, state_path)
        print(f"interrupted after step {trainer.step}; the state is saved as {kept}; resume with --resume {kept}")
        return False
    except Exception as error:
        bar.close()
        kept = keeping(trainer.save_state, state_path)
        advice = {TrainingOutOfMemoryError: " and a smaller --memory preset",
                  NonFiniteLossError: " and lower learning rates"}.get(type(error), " once the cause is fixed")
        message = f"The state after step {trainer.step} is saved as {kept}: resume with --resume {kept}{advice}"
        if isinstance(error, (TrainingOutOfMemoryError, NonFiniteLossError)):
            raise type(error)(f"{error}. {message}") from error
        print(message, file=sys.stderr)
        raise
    bar.close()
    return True


def _kept_elsewhere(save, path: Path, **options) -> Path:
    """What a process other than the first "keeps": nothing; the first process writes `path`."""
    return path


def _evaluate(args) -> int:
    """Score a result by the paper's protocol; write the table, the figures and the grid of samples."""
    if not is_echodistill_file(args.result):
        raise ValueError(f"{args.result} is not an EchoDistill result (or is damaged); give a file written by train")
    prompts = read_prompts(args.prompts.read_text()) if args.prompts else None
    photos = read_images(args.images)
    judges = load_judges(args.clip, args.dino)
    pair = _load_pair(args)
    teacher, student, text = pair.teacher, pair.student, pair.text
    personalization = Personalization.load(args.result, teacher, student, text)
    bar = tqdm(unit="prompt")

    def progress(done, total):
        bar.total = total
        bar.update(1)

    scores = evaluate_concept(teacher, student, text, personalization, photos, judges, prompts=prompts,
                              seeds=tuple(args.seeds), role=args.model, progress=progress)
    bar.close()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scores.md").write_text(scores.table() + "\n")
    (args.out / "scores.json").write_text(json.dumps(scores.to_dict(), indent=2))
    Image.fromarray((scores.grid * 255).round().to(torch.uint8).numpy()).save(args.out / "grid.png")
    print(scores.table())
    print(f"files: {args.out / 'scores.md'}, {args.out / 'scores.json'}, {args.out / 'grid.png'} (first row: the "
          "photos; then a row per prompt: the personalized model's samples, a gap, the untouched model's)")
    return 0


def _sample(args) -> int:
    check_output(args.out, replace_own=args.overwrite, suffix=".png")
    if not args.result.is_file():
        raise ValueError(f"the result {args.result} does not exist; give a file written by train")
    if not is_echodistill_file(args.result):
        raise ValueError(f"{args.result} is not an EchoDistill result (or is damaged); give a file written by train")
    pair = _load_pair(args)
    teacher, student, text = pair.teacher, pair.student, pair.text
    personalization = Personalization.load(args.result, teacher, student, text)
    seeds = [args.seed + index for index in range(len(args.prompt))]
    with personalization.applied(text, teacher, student):
        if args.model == "student":
            images = generate_student(student, text, args.prompt, seeds, steps=args.sample_steps or 1)
        else:
            images = generate_teacher(teacher, text, args.prompt, seeds,
                                      steps=args.sample_steps or TEACHER_SAMPLE_STEPS,
                                      guidance_scale=personalization.config.guidance_scale)
    save_grid(images, args.out)
    print(f"images: {args.out}")
    return 0


def save_grid(images: torch.Tensor, path: Path, scale: int = 1) -> Path:
    """[B, H, W, 3] in 0..1 -> one PNG row."""
    row = torch.cat(list(images), dim=1)
    array = (row.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    image = Image.fromarray(array)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _demo(args) -> int:
    start = time.time()
    device = resolve_device(args.device)
    teacher, student, text = default_models(device) if args.pair == "pixel" else bundled_pair(args.pair, device)
    images = demo_concept_images(teacher.image_size())
    plan = plan_run(images, token=DEMO_TOKEN, class_word=DEMO_CLASS_WORD, captions=demo_captions(len(images)),
                    tiny=True, steps=args.steps)
    trainer = plan.trainer(Pair(teacher, student, text, tiny=True))
    config, concept = plan.config, trainer.concept
    args.out.mkdir(parents=True, exist_ok=True)
    save_grid(torch.stack([image.permute(1, 2, 0) for image in images]), args.out / "concept.png", scale=4)
    evaluation = EvaluationSet(concept.subject, seeds_per_prompt=4, plain_count=32, drawn=DEMO_CONCEPT)
    judge = load_judge()
    untouched = {role: untouched_samples(sample, evaluation)  # before training: the models, the token as it starts
                 for role, sample in samplers(teacher, student, text, config.guidance_scale,
                                              trainer.personalization).items()}
    trained_from = time.time()
    if not run_with_progress(trainer, args.out / "demo.safetensors", args.out / "state.safetensors"):
        return 130
    training_seconds = time.time() - trained_from
    prompts = [template.format(concept.subject) for template in DEMO_PROMPTS]
    seeds = list(range(len(prompts)))
    with trainer.applied():
        student_images = generate_student(student, text, prompts, seeds)
        teacher_images = generate_teacher(teacher, text, prompts, seeds, guidance_scale=config.guidance_scale)
    files = {
        "concept": args.out / "concept.png",
        "student": save_grid(student_images, args.out / "student_1step.png", scale=4),
        "teacher": save_grid(teacher_images, args.out / f"teacher_{TEACHER_SAMPLE_STEPS}steps.png", scale=4),
        "result": trainer.personalization.save(args.out / "demo.safetensors"),
    }
    references = torch.stack(images) * 2 - 1
    personalized = samplers(teacher, student, text, config.guidance_scale, trainer.personalization)
    report = {role: evaluate(personalized[role], references, evaluation, judge, untouched[role],
                             grid=args.out / f"{role}_evaluated.png") for role in ("student", "teacher")}
    files.update({f"{role} evaluated": args.out / f"{role}_evaluated.png" for role in ("student", "teacher")})
    files["untouched student"] = save_sample_grid(untouched["student"].concept, args.out / "untouched_student.png",
                                                  columns=evaluation.seeds_per_prompt)
    report.update(seconds=round(time.time() - start, 1), training_seconds=round(training_seconds, 1),
                  steps=trainer.step, echo_samples=trainer.echo_samples, prompts=prompts,
                  models=f"bundled tiny, {args.pair} pair",
                  files={key: str(value) for key, value in files.items()})
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    for name, path in files.items():
        print(f"{name}: {path}")
    for role in ("student", "teacher"):
        print(f"{role}: " + ", ".join(f"{key} {value:.3f}" for key, value in report[role].items()))
    print(f"report: {args.out / 'report.json'}")
    return 0
