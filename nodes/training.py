"""Concept Images and EchoDistill Train."""

from __future__ import annotations

import base64
import logging
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..echodistill_core.config import PARAMETERISATIONS, PRESETS, EchoDistillConfig
from ..echodistill_core.data import CAPTION_SEPARATOR, ConceptDataset, ConceptImageError, caption_alternatives
from ..echodistill_core.lab.demo import demo_concept_images
from ..echodistill_core.image_networks import RunNetworks
from ..echodistill_core.memory import MEMORY_PRESETS
from ..echodistill_core.plots import LOSSES, loss_plot
from ..echodistill_core.recipe import (AUTO, DEFAULT_MEMORY, DEFAULT_PRESET, PRESET_CHOICES, Pair, RunPlan, plan_config,
                                       plan_run)
from ..echodistill_core.safekeeping import keep
from ..echodistill_core.placeholder_token import check_words
from ..echodistill_core.trainer import EchoDistillTrainer, NonFiniteLossError, TrainingOutOfMemoryError
from . import comfyui_host as host
from .comfyui_host import io
from .loaders import file_fingerprint
from .sampling import seed_input
from .sockets import (CATEGORY, CONCEPT, IMAGE_NETWORKS, ONE_STEP_MODEL, PERSONALIZED_TEACHER, STUDENT, TEACHER,
                      Concept, Personalized)

log = logging.getLogger("echodistill")
NO_STATE = "none (start fresh)"


class DemoConceptImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoDistillDemoConceptImages", display_name="EchoDistill Demo Concept Images", category=CATEGORY,
            description="The demo concept's images, drawn by code: try EchoDistill on the bundled tiny models.",
            inputs=[io.Int.Input("size", default=32, min=16, max=1024, step=8,
                                 tooltip="Image size in px (the bundled tiny models use 32).")],
            outputs=[io.Image.Output("images", display_name="images", tooltip="Five drawings of the demo concept (a "
                                     "red circle with a blue band across it) on black, for trying the pack without "
                                     "photos. Caption them as the demo does: a <mine> circle on black.")])

    @classmethod
    def execute(cls, size):
        return io.NodeOutput(torch.stack([image.permute(1, 2, 0) for image in demo_concept_images(size)]))


class ConceptImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoDistillConceptImages", display_name="EchoDistill Concept Images", category=CATEGORY,
            description="3-20 photos of one subject and the new word for it. Chain several of these nodes to mix "
                        "image sizes; images are cropped to a square and augmented during training.",
            inputs=[
                io.Image.Input("images", tooltip="Photos of the subject, e.g. from Load Image (a batch)."),
                io.String.Input("token", default="<sks>", tooltip="A new word, used in prompts for the subject. Use "
                                "something the model has never seen, like <my-dog>."),
                io.String.Input("class_word", default="dog", tooltip="What the subject is (dog, mug, person): prompts "
                                "say '<token> <class word>'."),
                io.String.Input("initializer_word", default="", tooltip="The word the token starts from; empty uses "
                                "the class word."),
                io.Custom(CONCEPT).Input("add_to", optional=True, tooltip="Another EchoDistill Concept Images node "
                                         "whose photos to include (mixed sizes)."),
                io.String.Input("captions", multiline=True, default="", optional=True, tooltip="Optional: one "
                                "caption per image, each mentioning the token. Several true captions for one image, "
                                f"separated by {CAPTION_SEPARATOR} (a <sks> dog on grass {CAPTION_SEPARATOR} a photo of "
                                "a <sks> dog), are used in turn, so the token also works with other words around it. "
                                "Empty: prompt templates are used."),
            ],
            outputs=[io.Custom(CONCEPT).Output("concept", display_name="concept",
                                               tooltip="The photos with the word that will stand for the subject.")])

    @classmethod
    def validate_inputs(cls, token=None, class_word=None, initializer_word=None, captions=None):
        """At queue time: a token of one word, a class word (and initializer word) that are plain words, and
        captions that mention the token. A value linked from another node arrives as None: checked at run."""
        problems = []
        for word, name in ((class_word, "class word"), (initializer_word, "initializer word")):
            if token is not None and word is not None and (word.strip() or name == "class word"):
                try:
                    check_words(token, word, name)
                except ValueError as error:
                    problems.append(str(error))
        if token is not None and captions:
            for index, line in enumerate(line for line in captions.splitlines() if line.strip()):
                try:
                    alternatives = caption_alternatives(line)
                except ConceptImageError as error:
                    problems.append(str(error))
                    continue
                problems += [f"caption {index + 1} ({alternative!r}) does not mention the token {token.strip()}"
                             for alternative in alternatives if token.strip() not in alternative]
        if problems:
            return "; ".join(dict.fromkeys(problems)) + ". Change it on the node and queue again."
        return True

    @classmethod
    def execute(cls, images, token, class_word, initializer_word, add_to=None, captions=""):
        photos = [image.clone().permute(2, 0, 1).float() for image in images]  # IMAGE is [B, H, W, 3]
        lines = [line.strip() for line in captions.splitlines() if line.strip()]
        if add_to is not None:
            if add_to.token != token.strip():
                raise ValueError(f"the chained concept uses the token {add_to.token}, this one {token}; use one token")
            photos = add_to.images + photos
            lines = (add_to.captions or []) + lines if (add_to.captions or lines) else []
        concept = Concept(photos, token.strip(), class_word.strip(), initializer_word.strip(), lines or None)
        ConceptDataset(concept.images, concept.token, concept.class_word, 16, captions=concept.captions)  # validate now
        return io.NodeOutput(concept)


def run_settings(steps=None, parameterisation=None, echo=None, seed=None, preview_every=None, teacher_lr=0.0,
                 student_lr=0.0, resolution=None, lora_rank=None, preview_prompts=None) -> dict:
    """Train's widgets as the run recipe's settings (recipe.plan_run): steps or a learning rate of 0 is the
    preset's (None), and `preview_prompts` is the config's preview_prompt."""
    return dict(steps=steps or None, parameterisation=parameterisation, echo=echo, seed=seed,
                preview_every=preview_every, resolution=resolution, lora_rank=lora_rank,
                preview_prompt=preview_prompts, teacher_lr=teacher_lr or None, student_lr=student_lr or None)


def plan(teacher, student, concept: Concept, networks: RunNetworks | None = None, *, preset=DEFAULT_PRESET,
         memory=DEFAULT_MEMORY, **widgets) -> tuple[RunPlan, Pair]:
    """The run Train's inputs ask for, planned by the run recipe as the command line plans its own, and the pair
    it trains (the bundled tiny models run with the tiny preset, unlimited). Every problem is refused before
    any model moves to the device."""
    pair = Pair(teacher.model, student.model, teacher.text, student.text, tiny=teacher.tiny)
    run = plan_run(concept.images, token=concept.token, class_word=concept.class_word,
                   initializer_word=concept.initializer_word, captions=concept.captions, preset=preset, memory=memory,
                   tiny=pair.tiny, networks=networks, **run_settings(**widgets))
    return run, pair


def _lr_tooltip(name: str) -> str:
    values = ", ".join(f"{preset} {getattr(config, name):g}" for preset, config in PRESETS.items())
    return (f"{name.split('_')[0].capitalize()} learning rate ({values}). 0 takes the preset's; choosing a preset "
            "fills in its value, and the Train node lists the rates the run uses when it starts.")


def filled_by_preset(widget, name: str):
    """A widget whose 0 means the preset's (steps, the learning rates): choosing a preset in the browser fills in
    that preset's own value, and auto puts back 0, since auto's preset depends on the models (web/echodistill.js)."""
    widget.extra_dict = {"echodistill_presets": {AUTO: 0, **{preset: getattr(config, name)
                                                             for preset, config in PRESETS.items()}}}
    return widget


def rate_input(name: str) -> io.Float.Input:
    """A learning rate; 0 is the preset's."""
    return filled_by_preset(io.Float.Input(name, default=0.0, min=0.0, max=1.0, step=1e-6, round=False, optional=True,
                                           tooltip=_lr_tooltip(name)), name)


LINKED = ("teacher", "student", "concept", "image_networks")
SHOWN_ONLY = ("preview_every", "preview_prompts", "save_every")  # what a run shows and keeps on the way, not learns


def result_fingerprint(**widgets) -> tuple:
    """Train's widgets that decide what a run learns (all but SHOWN_ONLY), the resume state as its file is on disk:
    equal fingerprints and the same linked inputs give the same result."""
    chosen = {name: value for name, value in widgets.items() if name not in LINKED + SHOWN_ONLY}
    if chosen.get("resume_state") not in (None, NO_STATE):
        chosen["resume_state"] = (chosen["resume_state"],
                                  file_fingerprint(host.states_folder() / chosen["resume_state"]))
    return tuple(sorted(chosen.items()))


class EchoDistillTrain(io.ComfyNode):
    finished: dict[str, tuple] = {}  # node id -> (fingerprint, linked inputs, outputs) of its last finished run

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoDistillTrain", display_name="EchoDistill Train", category=CATEGORY,
            description="Personalize the one-step student by training it together with the teacher (EchoDistill). "
                        "The node shows the losses as the run goes, the student's one-step previews of your preview "
                        "prompts (at step 1, then every preview_every steps) and what the run computes; Cancel keeps "
                        "a resumable state.",
            hidden=[io.Hidden.unique_id],
            inputs=[
                io.Custom(TEACHER).Input("teacher", tooltip="From EchoDistill Load Teacher."),
                io.Custom(STUDENT).Input("student", tooltip="From EchoDistill Load Student."),
                io.Custom(CONCEPT).Input("concept", tooltip="From EchoDistill Concept Images."),
                filled_by_preset(io.Int.Input(
                    "steps", default=0, min=0, max=100000, tooltip="Training steps; 0: the preset's (paper "
                    f"{PRESETS['paper'].steps}, the paper's for SD; tiny {PRESETS['tiny'].steps}, enough for the "
                    "bundled tiny models); choosing a preset fills in its value."), "steps"),
                io.Combo.Input("parameterisation", options=list(PARAMETERISATIONS), default=PARAMETERISATIONS[0],
                               tooltip="custom_diffusion: the paper's (trains cross-attention keys/values). lora: "
                               "less memory (its rank is lora_rank)."),
                io.Combo.Input("memory", options=list(MEMORY_PRESETS), default=DEFAULT_MEMORY, tooltip="Your "
                               "GPU's memory, for SD 2.1 + SD-Turbo at 512 px. 8 GB: batch 1, text encoder and VAE "
                               "parked in CPU memory; 12 GB: the paper's batch of 2 with gradient checkpointing; 24 "
                               "GB: faster, no checkpointing; unlimited: keep everything. Load the models in bf16 "
                               "(fp16 on older GPUs; the loaders' precision auto does). The bundled tiny models always "
                               "run as unlimited."),
                io.Boolean.Input("echo", default=True, tooltip="In the last quarter, the teacher also learns from the "
                                 "student's best samples (the echo)."),
                seed_input(42, "The same seed repeats a run."),
                io.Int.Input("preview_every", default=25, min=0, max=10000, tooltip="Show the student's one-step "
                             "previews at step 1 and then every N steps (0: never). A preview costs one student "
                             "evaluation per preview prompt."),
                io.Combo.Input("preset", options=list(PRESET_CHOICES), default=DEFAULT_PRESET, optional=True,
                               tooltip="Steps, learning rates and batch size: paper for SD-size models, tiny for the "
                               "bundled ones; auto picks by model. Choosing one fills in its steps and rates."),
                rate_input("teacher_lr"),
                rate_input("student_lr"),
                io.Combo.Input("resume_state", options=cls.state_choices(), default=NO_STATE, optional=True,
                               tooltip="Continue a cancelled run from its saved state (same settings)."),
                io.Int.Input("resolution", default=0, min=0, max=2048, step=8, optional=True, tooltip="Training "
                             "resolution in pixels; 0: the student's own (512 for SD-Turbo, also with a 768 px "
                             "teacher). Lower is faster and lighter, at some cost in detail."),
                io.Int.Input("save_every", default=250, min=0, max=100000, optional=True, tooltip="Every N steps keep "
                             "a resumable state (output/echodistill_states, replaced each time), so a crash loses at "
                             "most N steps; 0: never. The finished result is always saved to models/echodistill."),
                io.Custom(IMAGE_NETWORKS).Input("image_networks", optional=True, tooltip="From EchoDistill Load Image "
                                                "Networks: the discriminators' backbones and the feature network. "
                                                "Unconnected: the frozen teacher's features for both (no download), "
                                                "and for the bundled tiny models also their own small image "
                                                "network, as make demo trains."),
                io.Int.Input("lora_rank", default=PRESETS["paper"].lora_rank, min=1, max=256, optional=True,
                             tooltip="The rank of the LoRA factors when parameterisation is lora: higher learns more "
                             "detail and takes more memory. Unused by custom_diffusion."),
                io.String.Input("preview_prompts", multiline=True, default="", optional=True, tooltip="The prompts "
                                "the previews draw, one a line, shown side by side; use the concept's token to see "
                                "the subject, leave it out to see what else the student still draws. Empty: 'a photo "
                                "of a <token> <class word>'."),
            ],
            outputs=[
                io.Custom(ONE_STEP_MODEL).Output("one_step_model", display_name="one_step_model", tooltip="The "
                                                 "personalized one-step student: sample it with EchoDistill One-Step "
                                                 "Sample or save it."),
                io.Custom(PERSONALIZED_TEACHER).Output("personalized_teacher", display_name="teacher", tooltip="The "
                                                       "personalized multi-step teacher, for comparison (EchoDistill "
                                                       "Teacher Sample)."),
                io.Image.Output("loss_plot", display_name="loss_plot", tooltip="The training view as an image: a "
                                "panel per loss on one step axis, the echo stage marked."),
                io.String.Output("summary", display_name="summary", tooltip="What the run computed, a line per part: "
                                 "the losses, the discriminators, the echo."),
            ])

    @classmethod
    def validate_inputs(cls, steps=None, preview_every=None, teacher_lr=None, student_lr=None, resolution=None,
                        lora_rank=None, resume_state=None):
        """At queue time, the widgets' values as the core config sees them (every problem at once), and a
        resume state that is still there. A value linked from another node arrives as None: checked at run."""
        widgets = dict(steps=steps, preview_every=preview_every, teacher_lr=teacher_lr, student_lr=student_lr,
                       resolution=resolution, lora_rank=lora_rank)
        problems = []
        try:
            plan_config(**run_settings(**{name: value for name, value in widgets.items() if value is not None}))
        except (ValueError, TypeError) as error:
            problems.append(str(error))
        if resume_state not in (None, NO_STATE) and resume_state not in cls.state_choices():
            problems.append(f"resume_state {resume_state} is no longer in {host.states_folder()}; choose another "
                            f"or {NO_STATE}")
        if problems:
            return "EchoDistill Train cannot run with these settings: " + "; ".join(problems) + \
                ". Change them on the node and queue again."
        return True

    @classmethod
    def fingerprint_inputs(cls, **inputs):
        """ComfyUI runs Train again when this changes (or any input does): the resume state's file included, so a
        state kept again under its name (the autosave) is read again."""
        return result_fingerprint(**inputs)

    @staticmethod
    def state_choices() -> list[str]:
        folder = host.states_folder()
        saved = sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []
        return [NO_STATE] + saved

    @classmethod
    def execute(cls, teacher, student, concept, steps, parameterisation, memory, echo, seed, preview_every,
                preset="auto", teacher_lr=0.0, student_lr=0.0, resume_state=NO_STATE, resolution=0, save_every=250,
                image_networks: RunNetworks | None = None, lora_rank=None, preview_prompts=""):
        node_id = cls.hidden.unique_id
        fingerprint = result_fingerprint(
            steps=steps, parameterisation=parameterisation, memory=memory, echo=echo, seed=seed, preset=preset,
            teacher_lr=teacher_lr, student_lr=student_lr, resume_state=resume_state, resolution=resolution,
            lora_rank=lora_rank)
        linked = (teacher, student, concept, image_networks)
        earlier = cls.finished.pop(node_id, None)  # a new run's models never live beside the last run's
        if earlier and earlier[0] == fingerprint and all(a is b for a, b in zip(earlier[1], linked)):
            cls.finished[node_id] = earlier  # only what the run shows changed: its result stands
            return cls.show_finished(node_id, *earlier[2])
        outputs = cls.train(node_id, teacher, student, concept, steps, parameterisation, memory, echo, seed,
                            preview_every, preset, teacher_lr, student_lr, resume_state, resolution, save_every,
                            image_networks, lora_rank, preview_prompts)
        cls.finished[node_id] = (fingerprint, linked, outputs)
        return io.NodeOutput(*outputs)

    @staticmethod
    def show_finished(node_id, one_step: Personalized, personal_teacher, plot, summary: str) -> io.NodeOutput:
        """The finished run again, without training: its view in the node, its outputs."""
        config = one_step.personalization.config
        lines = summary.splitlines()
        log.info("EchoDistill: nothing that changes the result changed; the finished run's result stands (%s)",
                 lines[-1])
        host.send_to_browser("echodistill.summary", {
            "node": node_id, "lines": lines[:-1], "total": config.steps, "echo_start": _echo_start(config),
            "history": [_curves(entry) for entry in one_step.history]})
        host.send_to_browser("echodistill.finished", {"node": node_id, "result": lines[-1].removeprefix("result: ")})
        return io.NodeOutput(one_step, personal_teacher, plot, summary)

    @classmethod
    def train(cls, node_id, teacher, student, concept, steps, parameterisation, memory, echo, seed, preview_every,
              preset, teacher_lr, student_lr, resume_state, resolution, save_every, image_networks, lora_rank,
              preview_prompts) -> tuple:
        with torch.inference_mode(False), torch.enable_grad():
            images = [image.clone() for image in concept.images]  # inference tensors from other nodes
            run, pair = plan(teacher, student, replace(concept, images=images), image_networks, preset=preset,
                             memory=memory, steps=steps, parameterisation=parameterisation, echo=echo, seed=seed,
                             preview_every=preview_every, teacher_lr=teacher_lr, student_lr=student_lr,
                             resolution=resolution, lora_rank=lora_rank, preview_prompts=preview_prompts)
            for warning in run.warnings(pair, host.torch_device()):
                log.warning("EchoDistill: %s (Load Teacher and Load Student)", warning)
            # ComfyUI's other models leave the device before the run's own arrive; the student's own text encoder
            # is not used (both models read the teacher's) and stays offloaded.
            host.use([teacher.model, student.model], [teacher.text], training=True)
            trainer = run.trainer(pair)
            config = run.config
            if resume_state != NO_STATE:
                trainer.load_state(host.states_folder() / resume_state)
            summary = trainer.describe()
            log.info("EchoDistill run:\n  %s", "\n  ".join(summary))
            host.send_to_browser("echodistill.summary", {
                "node": node_id, "lines": summary, "total": config.steps, "echo_start": _echo_start(config),
                "history": [_curves(entry) for entry in trainer.history]})
            try:
                cls._run(trainer, node_id, save_every)
            finally:
                host.release_device_memory()
        result = keep(trainer.personalization.save, host.results_folder() / f"{_run_name(trainer)}.safetensors")
        log.info("EchoDistill: the result is saved as %s (Load Personalized lists it)", result)
        host.refresh_model_list(host.RESULTS_KIND)
        host.send_to_browser("echodistill.finished", {"node": node_id, "result": str(result)})
        one_step = Personalized(student, teacher.text, trainer.personalization, "student", trainer.history)
        personal_teacher = Personalized(teacher, teacher.text, trainer.personalization, "teacher", trainer.history)
        plot = loss_plot(trainer.history, config.steps, _echo_start(config))
        return one_step, personal_teacher, plot, "\n".join(summary + [f"result: {result}"])

    @classmethod
    def _run(cls, trainer: EchoDistillTrainer, node_id, save_every: int = 0) -> None:
        progress = host.Progress(trainer.config.steps, node_id)
        autosave = host.states_folder() / f"{_word(trainer)}_seed{trainer.config.seed}_autosave.safetensors"
        prompts = trainer.preview_prompts()

        def on_step(report):
            host.send_to_browser("echodistill.progress", {
                "node": node_id, "step": report.step, "total": report.total, "losses": _curves(report.losses),
                "echo_start": _echo_start(trainer.config)})
            if report.preview is not None:
                host.send_to_browser("echodistill.preview", {
                    "node": node_id, "step": report.step, "total": report.total, "prompts": prompts,
                    "size": list(report.preview.shape[:1]) * 2, "images": preview_images(report.preview, len(prompts))})
            if save_every and report.step % save_every == 0 and report.step < report.total:
                keep(trainer.save_state, autosave)
            progress.update(report.step)  # raises if the user pressed Cancel

        try:
            finished = trainer.train(callback=on_step, should_cancel=host.processing_interrupted)
        except host.interruption_types():
            cls._keep_state(trainer, node_id)
            raise
        except Exception as error:  # a non-finite loss, out of memory, anything: the last good step is kept
            path = cls._keep_state(trainer, node_id, "failed")
            advice = {TrainingOutOfMemoryError: ", with a smaller memory preset",
                      NonFiniteLossError: ", with lower learning rates"}.get(type(error), " once the cause is fixed")
            raise RuntimeError(f"EchoDistill stopped: {error}. The state after step {trainer.step} is saved as "
                               f"{path.name} in {path.parent}: choose it as resume_state to continue{advice}") from error
        if not finished:
            cls._keep_state(trainer, node_id)
            host.throw_if_interrupted()
            raise host.Interrupted(f"training stopped at step {trainer.step}")

    @staticmethod
    def _keep_state(trainer: EchoDistillTrainer, node_id, why: str = "cancelled") -> Path:
        stem = f"{_word(trainer)}_seed{trainer.config.seed}_step{trainer.step}"
        path = keep(trainer.save_state, host.unused_path(host.states_folder(), stem))
        message = (f"EchoDistill: {why} after step {trainer.step}; the state is saved as {path.name} in "
                   f"{path.parent}. Choose it as resume_state to continue.")
        log.warning(message)
        host.send_to_browser("echodistill.cancelled", {"node": node_id, "step": trainer.step, "state": path.name,
                                                        "why": why})
        return path


def _word(trainer: EchoDistillTrainer) -> str:
    """The token as a file-name stem: <my-dog> -> my-dog."""
    return "".join(c for c in trainer.config.token if c.isalnum() or c in "-_") or "concept"


def _run_name(trainer: EchoDistillTrainer) -> str:
    """The finished result's name: a later run of the same token, seed and length replaces it (Save
    Personalized keeps copies under names of your own)."""
    return f"{_word(trainer)}_seed{trainer.config.seed}_{trainer.config.steps}steps"


def _echo_start(config: EchoDistillConfig) -> int | None:
    """The first step of the echo stage (the trainer's describe() names the same), None without the echo."""
    return config.echo_start_step + 1 if config.echo else None


def _curves(losses: dict) -> dict:
    """The values the training view draws (and the step, when there is one), rounded for the browser."""
    return {name: round(float(value), 6) for name, value in losses.items() if name in LOSSES or name == "step"}


def preview_images(strip: torch.Tensor, count: int) -> list[str]:
    """The trainer's preview strip ([H, W * count, 3] in 0..1) as `count` PNG data URLs at their real size:
    the browser enlarges them without smoothing and labels them with that size."""
    urls = []
    for image in strip.chunk(count, dim=1):
        buffer = BytesIO()
        Image.fromarray((image.float().numpy() * 255).round().astype(np.uint8)).save(buffer, format="PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    return urls
