"""EchoDistill One-Step Sample and EchoDistill Teacher Sample."""

from __future__ import annotations

import torch

from ..echodistill_core.sampling import generate_student, generate_teacher
from . import comfy
from .sockets import CATEGORY, ONE_STEP_MODEL, PERSONALIZED_TEACHER

PROMPT_TOOLTIP = "Describe the image; use the concept's token (e.g. 'a photo of a <sks> dog on the beach')."


def _common_inputs(model_type: str, model_tooltip: str, steps: dict) -> dict:
    return {"required": {
        "model": (model_type, {"tooltip": model_tooltip}),
        "prompt": ("STRING", {"multiline": True, "default": "a photo of a <sks> dog", "tooltip": PROMPT_TOOLTIP}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Image i of the batch uses seed + i; "
                 "the same seed gives the same image."}),
        "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "How many images."}),
        "steps": ("INT", steps),
    }, "optional": {
        "upscale": ("INT", {"default": 1, "min": 1, "max": 16, "tooltip": "Enlarge the images this many times for "
                    "viewing, every pixel a sharp block (nearest neighbour); 1 keeps the model's size. The bundled "
                    "tiny models draw 32 px images: 8 shows them at 256 px."}),
    }, "hidden": {"node_id": "UNIQUE_ID"}}


def check_token(prompt: str, token: str) -> None:
    if token not in prompt:
        raise ValueError(f"the prompt does not mention the concept's token {token}; add it, e.g. "
                         f"'a photo of a {token} ...'")


def enlarged(images: torch.Tensor, factor: int) -> torch.Tensor:
    """IMAGE [B, H, W, 3] with every pixel repeated `factor` times in both directions."""
    if factor == 1:
        return images
    return images.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)


class _Sample:
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def VALIDATE_INPUTS(cls, prompt=None):
        """At queue time: a prompt to draw (its token is checked against the model when it runs)."""
        if prompt is not None and not prompt.strip():
            return "the prompt is empty; describe the image with the concept's token, e.g. 'a photo of a <sks> dog'"
        return True

    def sample(self, model, prompt, seed, batch_size, steps, upscale=1, node_id=None, **options):
        check_token(prompt, model.token)
        comfy.throw_if_interrupted()
        progress = comfy.Progress(steps, node_id)

        def after_each_step(done, total):  # the bar moves; Cancel stops between network evaluations
            progress.update(done)
            comfy.throw_if_interrupted()

        comfy.use([model.base.model], [model.text], personalization=model.personalization)
        with model.applied():
            images = self.generate(model.base.model, model.text, [prompt] * batch_size,
                                   [seed + i for i in range(batch_size)], steps=steps, callback=after_each_step,
                                   **options)
        return (enlarged(images, upscale),)


class OneStepSample(_Sample):
    OUTPUT_TOOLTIPS = ("The student's images (enlarged by upscale).",)
    DESCRIPTION = "Draw the personalized subject with the one-step student: one network evaluation per image."
    generate = staticmethod(generate_student)

    @classmethod
    def INPUT_TYPES(cls):
        return _common_inputs(ONE_STEP_MODEL, "From EchoDistill Train or EchoDistill Load Personalized.", {
            "default": 1, "min": 1, "max": 4, "tooltip": "1 is the one-step model; 2-4 refine with Euler "
            "ancestral steps."})


class TeacherSample(_Sample):
    OUTPUT_TOOLTIPS = ("The teacher's images (enlarged by upscale).",)
    DESCRIPTION = ("Draw the personalized subject with the multi-step teacher (DDIM with CFG), to compare; a "
                   "progress bar counts its steps and Cancel stops it.")

    @staticmethod
    def generate(model, text, prompts, seeds, steps, cfg, callback=None):
        return generate_teacher(model, text, prompts, seeds, steps=steps, guidance_scale=cfg, callback=callback)

    @classmethod
    def INPUT_TYPES(cls):
        inputs = _common_inputs(PERSONALIZED_TEACHER, "The teacher output of EchoDistill Train or EchoDistill Load "
                                "Personalized.", {"default": 25, "min": 1, "max": 200, "tooltip": "DDIM steps."})
        inputs["required"]["cfg"] = ("FLOAT", {"default": 7.5, "min": 1.0, "max": 30.0, "step": 0.1,
                                               "tooltip": "Classifier-free guidance scale."})
        return inputs
