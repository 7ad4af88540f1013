"""Stock sockets in and out: a teacher or student from the MODEL, CLIP and VAE a stock loader already
holds, and the personalized student back as a stock MODEL (its learned layers as LoRA patches), a
LORA_MODEL, and CONDITIONING that understands the token, for KSampler, SamplerCustom or any other node."""

from __future__ import annotations

import torch

from ..echodistill_core.checkpoints import load_state_dict
from ..echodistill_core.export import student_lora_tensors
from . import comfy
from .loaders import AUTO_FAMILY, FAMILY_CHOICES, PRECISION_INPUT, StudentRole, TeacherRole, model_dtypes
from .sampling import check_token
from .sockets import CATEGORY, ONE_STEP_MODEL, LoadedModel, Personalized


class _FromCheckpoint:
    CATEGORY = CATEGORY
    FUNCTION = "convert"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": f"The {cls.ROLE}'s MODEL from a stock loader (Load Checkpoint). "
                                f"{cls.EXAMPLE} LoRAs already applied to it are trained on as part of it."}),
            "clip": ("CLIP", {"tooltip": "The CLIP of the same checkpoint. Teacher and student share the teacher's "
                              "text encoder, so a LoRA on the student's CLIP is not used."}),
            "vae": ("VAE", {"tooltip": "The VAE of the same checkpoint."}),
            "family": (FAMILY_CHOICES, {"default": AUTO_FAMILY, "tooltip": "Which model family it is. auto-detect "
                       "reads it from the weights (v-prediction as ComfyUI found it); a student is taken as Turbo."}),
            "precision": PRECISION_INPUT,
        }}

    def convert(self, model, clip, vae, family, precision):
        name = f"the {self.ROLE}'s {comfy.model_kind(model)} MODEL"
        dtype = model_dtypes(precision, comfy.torch_device())
        with torch.inference_mode(False):  # weights made here must be usable for training later
            weights = comfy.checkpoint_weights(model, clip, vae, dtype)
            diffusion, text, found = load_state_dict(
                weights, name, role=self.ROLE, family=None if family == AUTO_FAMILY else family, dtype=dtype,
                device=comfy.offload_device())
        del weights
        comfy.manage(self.ROLE, diffusion, text)
        comfy.release_device_memory()
        return (LoadedModel(diffusion, text, f"{found.label} ({name})", family=found.name),)


class TeacherFromCheckpoint(TeacherRole, _FromCheckpoint):
    DESCRIPTION = ("Use a checkpoint a stock loader already loaded as the multi-step teacher (e.g. SD 2.1), "
                   "instead of loading it a second time.")


class StudentFromCheckpoint(StudentRole, _FromCheckpoint):
    DESCRIPTION = ("Use a checkpoint a stock loader already loaded as the one-step student (e.g. SD-Turbo), "
                   "instead of loading it a second time.")


class PersonalizedModel:
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL", "LORA_MODEL")
    RETURN_NAMES = ("model", "lora")
    OUTPUT_TOOLTIPS = ("The stock MODEL with the student's learned layers patched in, for KSampler or "
                       "SamplerCustom (SD-Turbo: 1 step, cfg 1.0). Condition it with EchoDistill Encode Prompt.",
                       "The same change as a LORA_MODEL, for core nodes such as Load LoRA Model.")
    DESCRIPTION = ("The personalized student as a stock MODEL: its learned layers become LoRA patches of the "
                   "student's MODEL, as Load LoRA applies a file, without saving anything.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "one_step_model": (ONE_STEP_MODEL, {"tooltip": "From EchoDistill Train or EchoDistill Load "
                               "Personalized."}),
            "model": ("MODEL", {"tooltip": "The student's MODEL as a stock loader loaded it (the checkpoint the "
                                "student was trained from)."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05, "tooltip": "How much "
                         "of the learned change to apply; 1.0 is what was trained."}),
        }}

    def patch(self, one_step_model: Personalized, model, strength):
        with torch.inference_mode(False):
            lora = student_lora_tensors(one_step_model.personalization, one_step_model.base.model.unet,
                                        dtype=torch.float32)
        return (comfy.with_lora(model, lora, strength), lora)


class EncodePrompt:
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The prompt through the personalized text encoder, which knows the token: the positive "
                       "input of KSampler or SamplerCustom.",)
    DESCRIPTION = "Encode a prompt with the token, as the personalized student reads it, for stock samplers."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "one_step_model": (ONE_STEP_MODEL, {"tooltip": "From EchoDistill Train or EchoDistill Load "
                               "Personalized."}),
            "text": ("STRING", {"multiline": True, "default": "a photo of a <sks> dog", "tooltip": "A prompt "
                     "with the token, e.g. a photo of a <my-dog> dog on the beach."}),
        }}

    def encode(self, one_step_model: Personalized, text):
        check_token(text, one_step_model.token)
        one_step_model.personalization.token.check_within_window(text)
        comfy.use(texts=[one_step_model.text], personalization=one_step_model.personalization)
        with torch.inference_mode(False), torch.no_grad(), one_step_model.applied():
            cond = one_step_model.text([text])
        return ([[cond.float().cpu(), {}]],)
