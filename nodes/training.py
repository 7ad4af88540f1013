"""Concept Images and EchoDistill Train."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..echodistill_core.config import PRESETS, EchoDistillConfig
from ..echodistill_core.data import ConceptDataset
from ..echodistill_core.demo import demo_concept_images
from ..echodistill_core.image_networks import RunNetworks, choose_networks
from ..echodistill_core.memory import DEFAULT_MEMORY_PRESET, MEMORY_PRESETS
from ..echodistill_core.plots import LOSSES, loss_plot
from ..echodistill_core.safekeeping import keep
from ..echodistill_core.token import check_words
from ..echodistill_core.trainer import (EchoDistillTrainer, NonFiniteLossError, TrainingOutOfMemoryError,
                                        training_resolution)
from . import comfy
from .sockets import (CATEGORY, CONCEPT, IMAGE_NETWORKS, ONE_STEP_MODEL, PERSONALIZED_TEACHER, STUDENT, TEACHER,
                      Concept, Personalized)

log = logging.getLogger("echodistill")
NO_STATE = "none (start fresh)"


class DemoConceptImages:
    CATEGORY = CATEGORY
    FUNCTION = "images"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("Five drawings of the demo concept (a pink heart), for trying the pack without photos.",)
    DESCRIPTION = "The demo concept's images, drawn by code: try EchoDistill on the bundled tiny models."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"size": ("INT", {"default": 32, "min": 16, "max": 1024, "step": 8,
                                              "tooltip": "Image size in px (the bundled tiny models use 32)."})}}

    def images(self, size):
        return (torch.stack([image.permute(1, 2, 0) for image in demo_concept_images(size)]),)


class ConceptImages:
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = (CONCEPT,)
    RETURN_NAMES = ("concept",)
    OUTPUT_TOOLTIPS = ("The photos with the word that will stand for the subject.",)
    DESCRIPTION = ("3-20 photos of one subject and the new word for it. Chain several of these nodes to mix "
                   "image sizes; images are cropped to a square and augmented during training.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Photos of the subject, e.g. from Load Image (a batch)."}),
            "token": ("STRING", {"default": "<sks>", "tooltip": "A new word, used in prompts for the subject. "
                                 "Use something the model has never seen, like <my-dog>."}),
            "class_word": ("STRING", {"default": "dog", "tooltip": "What the subject is (dog, mug, person): "
                                      "prompts say '<token> <class word>'."}),
            "initializer_word": ("STRING", {"default": "", "tooltip": "The word the token starts from; empty "
                                            "uses the class word."}),
        }, "optional": {
            "add_to": (CONCEPT, {"tooltip": "Another EchoDistill Concept Images node whose photos to include "
                                 "(mixed sizes)."}),
            "captions": ("STRING", {"multiline": True, "default": "", "tooltip": "Optional: one caption per "
                                    "image, each mentioning the token. Empty: prompt templates are used."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, token=None, class_word=None, initializer_word=None, captions=None):
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
            problems += [f"caption {index + 1} ({line.strip()!r}) does not mention the token {token.strip()}"
                         for index, line in enumerate(line for line in captions.splitlines() if line.strip())
                         if token.strip() not in line]
        if problems:
            return "; ".join(dict.fromkeys(problems)) + ". Change it on the node and queue again."
        return True

    def build(self, images, token, class_word, initializer_word, add_to=None, captions=""):
        photos = [image.clone().permute(2, 0, 1).float() for image in images]  # IMAGE is [B, H, W, 3]
        lines = [line.strip() for line in captions.splitlines() if line.strip()]
        if add_to is not None:
            if add_to.token != token.strip():
                raise ValueError(f"the chained concept uses the token {add_to.token}, this one {token}; use one token")
            photos = add_to.images + photos
            lines = (add_to.captions or []) + lines if (add_to.captions or lines) else []
        concept = Concept(photos, token.strip(), class_word.strip(), initializer_word.strip(), lines or None)
        ConceptDataset(concept.images, concept.token, concept.class_word, 16, captions=concept.captions)  # validate now
        return (concept,)


def run_config(tiny: bool, steps=None, parameterisation=None, echo=None, seed=None, preview_every=None, preset="auto",
               teacher_lr=0.0, student_lr=0.0, resolution=None, lora_rank=None, preview_prompts=None,
               **concept) -> EchoDistillConfig:
    """The core config of Train's widgets (`concept`: token, class_word, initializer_word); the config checks
    every value. A learning rate of 0 is the preset's; auto is the tiny preset for the bundled models."""
    preset = preset if preset != "auto" else ("tiny" if tiny else "paper")
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is not one of auto, {', '.join(PRESETS)}")
    chosen = dict(steps=steps, parameterisation=parameterisation, echo=echo, seed=seed, preview_every=preview_every,
                  resolution=resolution, lora_rank=lora_rank, preview_prompt=preview_prompts, **concept,
                  teacher_lr=teacher_lr or None, student_lr=student_lr or None)
    return PRESETS[preset].replace(**{name: value for name, value in chosen.items() if value is not None})


def _lr_tooltip(name: str) -> str:
    values = ", ".join(f"{preset} {getattr(config, name):g}" for preset, config in PRESETS.items())
    return (f"{name.split('_')[0].capitalize()} learning rate ({values}). 0 takes the preset's; choosing a preset "
            "fills in its value, and the Train node lists the rates the run uses when it starts.")


class EchoDistillTrain:
    CATEGORY = CATEGORY
    FUNCTION = "train"
    RETURN_TYPES = (ONE_STEP_MODEL, PERSONALIZED_TEACHER, "IMAGE", "STRING")
    RETURN_NAMES = ("one_step_model", "teacher", "loss_plot", "summary")
    OUTPUT_TOOLTIPS = ("The personalized one-step student: sample it with EchoDistill One-Step Sample or save it.",
                       "The personalized multi-step teacher, for comparison (EchoDistill Teacher Sample).",
                       "The training view as an image: a panel per loss on one step axis, the echo stage marked.",
                       "What the run computed, a line per part: the losses, the discriminators, the echo.")
    DESCRIPTION = ("Personalize the one-step student by training it together with the teacher (EchoDistill). "
                   "The node shows the losses as the run goes, the student's one-step previews of your preview "
                   "prompts (at step 1, then every preview_every steps) and what the run computes; Cancel keeps "
                   "a resumable state.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "teacher": (TEACHER, {"tooltip": "From EchoDistill Load Teacher."}),
            "student": (STUDENT, {"tooltip": "From EchoDistill Load Student."}),
            "concept": (CONCEPT, {"tooltip": "From EchoDistill Concept Images."}),
            "steps": ("INT", {"default": 300, "min": 1, "max": 100000, "tooltip": "Training steps. The paper "
                      "uses 1000 for SD; 300 is enough for the bundled tiny models."}),
            "parameterisation": (["custom_diffusion", "lora"], {"default": "custom_diffusion", "tooltip":
                                 "custom_diffusion: the paper's (trains cross-attention keys/values). lora: "
                                 "less memory (its rank is lora_rank)."}),
            "memory": (list(MEMORY_PRESETS), {"default": DEFAULT_MEMORY_PRESET, "tooltip": "Your GPU's memory, "
                       "for SD 2.1 + SD-Turbo at 512 px. 8 GB: batch 1, text encoder and VAE parked in CPU "
                       "memory; 12 GB: the paper's batch of 2 with gradient checkpointing; 24 GB: faster, no "
                       "checkpointing; unlimited: keep everything. Load the models in bf16 (fp16 on older GPUs). "
                       "The bundled tiny models always run as unlimited."}),
            "echo": ("BOOLEAN", {"default": True, "tooltip": "In the last quarter, the teacher also learns from "
                                 "the student's best samples (the echo)."}),
            "seed": ("INT", {"default": 42, "min": 0, "max": 2**31 - 1, "tooltip": "The same seed repeats a run."}),
            "preview_every": ("INT", {"default": 25, "min": 0, "max": 10000, "tooltip": "Show the student's one-step "
                              "previews at step 1 and then every N steps (0: never). A preview costs one student "
                              "evaluation per preview prompt."}),
        }, "optional": {
            "preset": (["auto", *PRESETS], {"default": "auto", "tooltip": "Learning rates and batch size: "
                       "paper for SD-size models, tiny for the bundled ones; auto picks by model."}),
            "teacher_lr": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 1e-6, "round": False,
                                     "tooltip": _lr_tooltip("teacher_lr"),
                                     "echodistill_presets": {p: c.teacher_lr for p, c in PRESETS.items()}}),
            "student_lr": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 1e-6, "round": False,
                                     "tooltip": _lr_tooltip("student_lr"),
                                     "echodistill_presets": {p: c.student_lr for p, c in PRESETS.items()}}),
            "resume_state": (cls.state_choices(), {"default": NO_STATE, "tooltip": "Continue a cancelled run "
                             "from its saved state (same settings)."}),
            "resolution": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 8, "tooltip": "Training "
                           "resolution in pixels; 0: the student's own (512 for SD-Turbo, also with a 768 px teacher). Lower "
                           "is faster and lighter, at some cost in detail."}),
            "save_every": ("INT", {"default": 250, "min": 0, "max": 100000, "tooltip": "Every N steps keep a "
                           "resumable state (output/echodistill_states, replaced each time), so a crash loses at "
                           "most N steps; 0: never. The finished result is always saved to models/echodistill."}),
            "image_networks": (IMAGE_NETWORKS, {"tooltip": "From EchoDistill Load Image Networks: the "
                               "discriminators' backbones and the feature network. Unconnected: the frozen "
                               "teacher's features for both (no download)."}),
            "lora_rank": ("INT", {"default": PRESETS["paper"].lora_rank, "min": 1, "max": 256, "tooltip": "The rank "
                          "of the LoRA factors when parameterisation is lora: higher learns more detail and takes "
                          "more memory. Unused by custom_diffusion."}),
            "preview_prompts": ("STRING", {"multiline": True, "default": "", "tooltip": "The prompts the previews "
                                "draw, one a line, shown side by side; use the concept's token to see the subject, "
                                "leave it out to see what else the student still draws. Empty: 'a photo of a "
                                "<token> <class word>'."}),
        }, "hidden": {"node_id": "UNIQUE_ID"}}

    @classmethod
    def VALIDATE_INPUTS(cls, steps=None, preview_every=None, teacher_lr=None, student_lr=None, resolution=None,
                        lora_rank=None, resume_state=None):
        """At queue time, the widgets' values as the core config sees them (every problem at once), and a
        resume state that is still there. A value linked from another node arrives as None: checked at run."""
        widgets = dict(steps=steps, preview_every=preview_every, teacher_lr=teacher_lr, student_lr=student_lr,
                       resolution=resolution, lora_rank=lora_rank)
        problems = []
        try:
            run_config(False, **{name: value for name, value in widgets.items() if value is not None})
        except (ValueError, TypeError) as error:
            problems.append(str(error))
        if resume_state not in (None, NO_STATE) and resume_state not in cls.state_choices():
            problems.append(f"resume_state {resume_state} is no longer in {comfy.states_folder()}; choose another "
                            f"or {NO_STATE}")
        if problems:
            return "EchoDistill Train cannot run with these settings: " + "; ".join(problems) + \
                ". Change them on the node and queue again."
        return True

    @staticmethod
    def state_choices() -> list[str]:
        folder = comfy.states_folder()
        saved = sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []
        return [NO_STATE] + saved

    def train(self, teacher, student, concept, steps, parameterisation, memory, echo, seed, preview_every,
              preset="auto", teacher_lr=0.0, student_lr=0.0, resume_state=NO_STATE, resolution=0,
              save_every=250, image_networks: RunNetworks | None = None, lora_rank=None, preview_prompts="",
              node_id=None):
        memory = MEMORY_PRESETS["unlimited" if teacher.tiny else memory]  # tiny models need no saving
        config = memory.apply(run_config(
            teacher.tiny, steps, parameterisation, echo, seed, preview_every, preset, teacher_lr, student_lr,
            resolution, lora_rank, preview_prompts, token=concept.token, class_word=concept.class_word,
            initializer_word=concept.initializer_word))
        networks = image_networks or choose_networks()  # unconnected: the teacher's features for both
        self._check_memory(memory, teacher, networks)
        with torch.inference_mode(False), torch.enable_grad():
            # ComfyUI's other models leave the device before the run's own arrive; the student's own text encoder
            # is not used (both models read the teacher's) and stays offloaded.
            comfy.use([teacher.model, student.model], [teacher.text], training=True)
            images = [image.clone() for image in concept.images]  # inference tensors from other nodes
            dataset = ConceptDataset(images, config.token, config.class_word,
                                     training_resolution(config, student.model), captions=concept.captions)
            trainer = EchoDistillTrainer(teacher.model, student.model, teacher.text, dataset, config,
                                         student_text=student.text, discriminator_backbones=networks.discriminators,
                                         feature_network=networks.feature)
            if resume_state != NO_STATE:
                trainer.load_state(comfy.states_folder() / resume_state)
            summary = trainer.describe()
            log.info("EchoDistill run:\n  %s", "\n  ".join(summary))
            comfy.send_to_browser("echodistill.summary", {
                "node": node_id, "lines": summary, "total": config.steps, "echo_start": _echo_start(config),
                "history": [_curves(entry) for entry in trainer.history]})
            try:
                self._run(trainer, node_id, save_every)
            finally:
                comfy.release_device_memory()
        result = keep(trainer.personalization.save, comfy.results_folder() / f"{_run_name(trainer)}.safetensors")
        log.info("EchoDistill: the result is saved as %s (Load Personalized lists it)", result)
        comfy.refresh_model_list(comfy.RESULTS_KIND)
        comfy.send_to_browser("echodistill.finished", {"node": node_id, "result": str(result)})
        one_step = Personalized(student, teacher.text, trainer.personalization, "student", trainer.history)
        personal_teacher = Personalized(teacher, teacher.text, trainer.personalization, "teacher", trainer.history)
        plot = loss_plot(trainer.history, config.steps, _echo_start(config))
        return (one_step, personal_teacher, plot, "\n".join(summary + [f"result: {result}"]))

    @staticmethod
    def _check_memory(memory, teacher, networks: RunNetworks) -> None:
        """Before training: image networks too large for the memory preset are refused, weights in another
        precision than it counts on are warned about."""
        memory.check_image_networks(networks)
        wanted = memory.weight_dtype(teacher.model.device)
        if wanted is not None and teacher.model.dtype == torch.float32:
            log.warning("EchoDistill: the models are loaded in fp32, but the %s memory preset counts on %s; "
                        "choose that precision in Load Teacher and Load Student", memory.name, wanted)

    def _run(self, trainer: EchoDistillTrainer, node_id, save_every: int = 0) -> None:
        progress = comfy.Progress(trainer.config.steps, node_id)
        autosave = comfy.states_folder() / f"{_word(trainer)}_seed{trainer.config.seed}_autosave.safetensors"
        prompts = trainer.preview_prompts()

        def on_step(report):
            comfy.send_to_browser("echodistill.progress", {
                "node": node_id, "step": report.step, "total": report.total, "losses": _curves(report.losses),
                "echo_start": _echo_start(trainer.config)})
            if report.preview is not None:
                comfy.send_to_browser("echodistill.preview", {
                    "node": node_id, "step": report.step, "total": report.total, "prompts": prompts,
                    "size": list(report.preview.shape[:1]) * 2, "images": preview_images(report.preview, len(prompts))})
            if save_every and report.step % save_every == 0 and report.step < report.total:
                keep(trainer.save_state, autosave)
            progress.update(report.step)  # raises if the user pressed Cancel

        try:
            finished = trainer.train(callback=on_step, should_cancel=comfy.processing_interrupted)
        except comfy.interruption_types():
            self._keep_state(trainer, node_id)
            raise
        except Exception as error:  # a non-finite loss, out of memory, anything: the last good step is kept
            path = self._keep_state(trainer, node_id, "failed")
            advice = {TrainingOutOfMemoryError: ", with a smaller memory preset",
                      NonFiniteLossError: ", with lower learning rates"}.get(type(error), " once the cause is fixed")
            raise RuntimeError(f"EchoDistill stopped: {error}. The state after step {trainer.step} is saved as "
                               f"{path.name} in {path.parent}: choose it as resume_state to continue{advice}") from error
        if not finished:
            self._keep_state(trainer, node_id)
            comfy.throw_if_interrupted()
            raise comfy.Interrupted(f"training stopped at step {trainer.step}")

    @staticmethod
    def _keep_state(trainer: EchoDistillTrainer, node_id, why: str = "cancelled") -> Path:
        stem = f"{_word(trainer)}_seed{trainer.config.seed}_step{trainer.step}"
        path = keep(trainer.save_state, comfy.unused_path(comfy.states_folder(), stem))
        message = (f"EchoDistill: {why} after step {trainer.step}; the state is saved as {path.name} in "
                   f"{path.parent}. Choose it as resume_state to continue.")
        log.warning(message)
        comfy.send_to_browser("echodistill.cancelled", {"node": node_id, "step": trainer.step, "state": path.name,
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
        buffer = io.BytesIO()
        Image.fromarray((image.float().numpy() * 255).round().astype(np.uint8)).save(buffer, format="PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    return urls
