"""Concept Images and EchoDistill Train."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..echodistill_core.config import PRESETS
from ..echodistill_core.data import ConceptDataset
from ..echodistill_core.demo import demo_concept_images
from ..echodistill_core.image_networks import RunNetworks, choose_networks
from ..echodistill_core.memory import DEFAULT_MEMORY_PRESET, MEMORY_PRESETS
from ..echodistill_core.plots import loss_plot
from ..echodistill_core.safekeeping import keep
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
            "add_to": (CONCEPT, {"tooltip": "Another Concept Images node whose photos to include (mixed sizes)."}),
            "captions": ("STRING", {"multiline": True, "default": "", "tooltip": "Optional: one caption per "
                                    "image, each mentioning the token. Empty: prompt templates are used."}),
        }}

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


class EchoDistillTrain:
    CATEGORY = CATEGORY
    FUNCTION = "train"
    RETURN_TYPES = (ONE_STEP_MODEL, PERSONALIZED_TEACHER, "IMAGE", "STRING")
    RETURN_NAMES = ("one_step_model", "teacher", "loss_plot", "summary")
    OUTPUT_TOOLTIPS = ("The personalized one-step student: sample it with One-Step Personalized Sample or save it.",
                       "The personalized multi-step teacher, for comparison (Teacher Sample).",
                       "The losses over the run, as an image.",
                       "What the run computed, a line per part: the losses, the discriminators, the echo.")
    DESCRIPTION = ("Personalize the one-step student by training it together with the teacher (EchoDistill). "
                   "Shows the active losses and discriminators, a one-step preview every few steps and the loss "
                   "curves; Cancel keeps a resumable state.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "teacher": (TEACHER, {"tooltip": "From Load Teacher."}),
            "student": (STUDENT, {"tooltip": "From Load Student."}),
            "concept": (CONCEPT, {"tooltip": "From Concept Images."}),
            "steps": ("INT", {"default": 300, "min": 1, "max": 100000, "tooltip": "Training steps. The paper "
                      "uses 1000 for SD; 300 is enough for the bundled tiny models."}),
            "parameterisation": (["custom_diffusion", "lora"], {"default": "custom_diffusion", "tooltip":
                                 "custom_diffusion: the paper's (trains cross-attention keys/values). lora: "
                                 "less memory."}),
            "memory": (list(MEMORY_PRESETS), {"default": DEFAULT_MEMORY_PRESET, "tooltip": "Your GPU's memory, "
                       "for SD 2.1 + SD-Turbo at 512 px. 8 GB: batch 1, text encoder and VAE parked in CPU "
                       "memory; 12 GB: the paper's batch of 2 with gradient checkpointing; 24 GB: faster, no "
                       "checkpointing; unlimited: keep everything. Load the models in bf16 (fp16 on older GPUs). "
                       "The bundled tiny models ignore it."}),
            "echo": ("BOOLEAN", {"default": True, "tooltip": "In the last quarter, the teacher also learns from "
                                 "the student's best samples (the echo)."}),
            "seed": ("INT", {"default": 42, "min": 0, "max": 2**31 - 1, "tooltip": "The same seed repeats a run."}),
            "preview_every": ("INT", {"default": 25, "min": 0, "max": 10000, "tooltip": "Show a one-step preview "
                              "every N steps (0: never). A preview costs one student evaluation."}),
        }, "optional": {
            "preset": (["auto", "paper", "tiny"], {"default": "auto", "tooltip": "Learning rates and batch size: "
                       "paper for SD-size models, tiny for the bundled ones; auto picks by model."}),
            "teacher_lr": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 1e-6, "round": False,
                                     "tooltip": "Teacher learning rate; 0 uses the preset's (paper: 1e-5)."}),
            "student_lr": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 1e-6, "round": False,
                                     "tooltip": "Student learning rate; 0 uses the preset's (paper: 2e-5)."}),
            "resume_state": (cls.state_choices(), {"default": NO_STATE, "tooltip": "Continue a cancelled run "
                             "from its saved state (same settings)."}),
            "resolution": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 8, "tooltip": "Training "
                           "resolution in pixels; 0: the student's own (512 for SD-Turbo, also with a 768 px teacher). Lower "
                           "is faster and lighter, at some cost in detail."}),
            "save_every": ("INT", {"default": 250, "min": 0, "max": 100000, "tooltip": "Every N steps keep a "
                           "resumable state (output/echodistill_states, replaced each time), so a crash loses at "
                           "most N steps; 0: never. The finished result is always saved to models/echodistill."}),
            "image_networks": (IMAGE_NETWORKS, {"tooltip": "From Load Image Networks: the discriminators' backbones "
                               "and the feature network. Unconnected: the frozen teacher's features for both (no "
                               "download)."}),
        }, "hidden": {"node_id": "UNIQUE_ID"}}

    @staticmethod
    def state_choices() -> list[str]:
        folder = comfy.states_folder()
        saved = sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []
        return [NO_STATE] + saved

    def train(self, teacher, student, concept, steps, parameterisation, memory, echo, seed, preview_every,
              preset="auto", teacher_lr=0.0, student_lr=0.0, resume_state=NO_STATE, resolution=0,
              save_every=250, image_networks: RunNetworks | None = None, node_id=None):
        preset = preset if preset != "auto" else ("tiny" if teacher.tiny else "paper")
        memory = MEMORY_PRESETS["unlimited" if teacher.tiny else memory]  # tiny models need no saving
        config = memory.apply(PRESETS[preset].replace(
            token=concept.token, class_word=concept.class_word, initializer_word=concept.initializer_word,
            steps=steps, parameterisation=parameterisation, echo=echo, seed=seed, preview_every=preview_every,
            resolution=resolution, **({"teacher_lr": teacher_lr} if teacher_lr > 0 else {}),
            **({"student_lr": student_lr} if student_lr > 0 else {}),
        ))
        networks = image_networks or choose_networks()  # unconnected: the teacher's features for both
        self._check_memory(memory, teacher, networks)
        with torch.inference_mode(False), torch.enable_grad():
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
            comfy.send_to_browser("echodistill.summary", {"node": node_id, "lines": summary})
            comfy.free_device_memory_for_training()
            try:
                self._run(trainer, node_id, save_every)
            finally:
                comfy.release_device_memory()
        result = keep(trainer.personalization.save,
                      comfy.unused_path(comfy.results_folder(), f"{_word(trainer)}_seed{trainer.config.seed}"))
        log.info("EchoDistill: the result is saved as %s (Load Personalized lists it)", result)
        one_step = Personalized(student, teacher.text, trainer.personalization, "student", trainer.history)
        personal_teacher = Personalized(teacher, teacher.text, trainer.personalization, "teacher", trainer.history)
        return (one_step, personal_teacher, loss_plot(trainer.history), "\n".join(summary))

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

        def on_step(report):
            preview = None
            if report.preview is not None:
                preview = Image.fromarray((report.preview.numpy() * 255).round().astype(np.uint8))
            comfy.send_to_browser("echodistill.progress", {
                "node": node_id, "step": report.step, "total": report.total,
                "losses": {name: round(value, 5) for name, value in report.losses.items()}})
            if save_every and report.step % save_every == 0 and report.step < report.total:
                keep(trainer.save_state, autosave)
            progress.update(report.step, preview)  # raises if the user pressed Cancel

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
        comfy.send_to_browser("echodistill.cancelled", {"node": node_id, "step": trainer.step, "state": path.name})
        return path


def _word(trainer: EchoDistillTrainer) -> str:
    """The token as a file-name stem: <my-dog> -> my-dog."""
    return "".join(c for c in trainer.config.token if c.isalnum() or c in "-_") or "concept"
