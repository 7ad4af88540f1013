"""One-Step Personalized Sample and Teacher Sample."""

from __future__ import annotations

from ..echodistill_core.sampling import generate_student, generate_teacher
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
    }}


def _check_token(prompt: str, token: str) -> None:
    if token not in prompt:
        raise ValueError(f"the prompt does not mention the concept's token {token}; add it, e.g. "
                         f"'a photo of a {token} ...'")


class _Sample:
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("IMAGE",)

    def sample(self, model, prompt, seed, batch_size, steps, **options):
        _check_token(prompt, model.token)
        with model.applied():
            images = self.generate(model.base.model, model.text, [prompt] * batch_size,
                                   [seed + i for i in range(batch_size)], steps=steps, **options)
        return (images,)


class OneStepSample(_Sample):
    OUTPUT_TOOLTIPS = ("The student's images.",)
    DESCRIPTION = "Draw the personalized subject with the one-step student: one network evaluation per image."
    generate = staticmethod(generate_student)

    @classmethod
    def INPUT_TYPES(cls):
        return _common_inputs(ONE_STEP_MODEL, "From EchoDistill Train or Load Personalized.", {
            "default": 1, "min": 1, "max": 4, "tooltip": "1 is the one-step model; 2-4 refine with Euler "
            "ancestral steps."})


class TeacherSample(_Sample):
    OUTPUT_TOOLTIPS = ("The teacher's images.",)
    DESCRIPTION = "Draw the personalized subject with the multi-step teacher (DDIM with CFG), to compare."

    @staticmethod
    def generate(model, text, prompts, seeds, steps, cfg):
        return generate_teacher(model, text, prompts, seeds, steps=steps, guidance_scale=cfg)

    @classmethod
    def INPUT_TYPES(cls):
        inputs = _common_inputs(PERSONALIZED_TEACHER, "The teacher output of EchoDistill Train or Load "
                                "Personalized.", {"default": 25, "min": 1, "max": 200, "tooltip": "DDIM steps."})
        inputs["required"]["cfg"] = ("FLOAT", {"default": 7.5, "min": 1.0, "max": 30.0, "step": 0.1,
                                               "tooltip": "Classifier-free guidance scale."})
        return inputs
