"""EchoDistill One-Step Sample and EchoDistill Teacher Sample."""

from __future__ import annotations

import torch

from ..echodistill_core.config import PAPER_GUIDANCE, TEACHER_SAMPLE_STEPS
from ..echodistill_core.sampling import generate_student, generate_teacher
from . import comfyui_host as host
from .comfyui_host import io
from .sockets import CATEGORY, ONE_STEP_MODEL, PERSONALIZED_TEACHER

PROMPT_TOOLTIP = "Describe the image; use the concept's token (e.g. 'a photo of a <sks> dog on the beach')."


def seed_input(default: int, tooltip: str) -> io.Int.Input:
    """A seed with the frontend's control_after_generate widget (fixed, increment, decrement, randomize); web/
    echodistill.js sets a new node's to fixed, so a graph queued again draws and trains the same."""
    return io.Int.Input("seed", default=default, min=0, max=2**31 - 1, control_after_generate=True, tooltip=tooltip)


def sampler_inputs(model_type: str, model_tooltip: str, *settings: io.Input) -> list:
    """The samplers' inputs: `settings` (steps, and cfg) after the batch size."""
    return [
        io.Custom(model_type).Input("model", tooltip=model_tooltip),
        io.String.Input("prompt", multiline=True, default="a photo of a <sks> dog", tooltip=PROMPT_TOOLTIP),
        seed_input(0, "Image i of the batch uses seed + i; the same seed gives the same image."),
        io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="How many images."),
        *settings,
        io.Int.Input("upscale", default=1, min=1, max=16, optional=True, tooltip="Enlarge the images this many times "
                     "for viewing, every pixel a sharp block (nearest neighbour); 1 keeps the model's size. The "
                     "bundled tiny models draw 32 px images: 8 shows them at 256 px."),
    ]


def check_token(prompt: str, token: str) -> None:
    if token not in prompt:
        raise ValueError(f"the prompt does not mention the concept's token {token}; add it, e.g. "
                         f"'a photo of a {token} ...'")


def enlarged(images: torch.Tensor, factor: int) -> torch.Tensor:
    """IMAGE [B, H, W, 3] with every pixel repeated `factor` times in both directions."""
    if factor == 1:
        return images
    return images.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)


class _Sample(io.ComfyNode):
    @classmethod
    def validate_inputs(cls, prompt=None):
        """At queue time: a prompt to draw (its token is checked against the model when it runs)."""
        if prompt is not None and not prompt.strip():
            return "the prompt is empty; describe the image with the concept's token, e.g. 'a photo of a <sks> dog'"
        return True

    @classmethod
    def execute(cls, model, prompt, seed, batch_size, steps, upscale=1, **options):
        check_token(prompt, model.token)
        host.throw_if_interrupted()
        progress = host.Progress(steps, cls.hidden.unique_id)

        def after_each_step(done, total):  # the bar moves; Cancel stops between network evaluations
            progress.update(done)
            host.throw_if_interrupted()

        host.use([model.base.model], [model.text], personalization=model.personalization)
        with model.applied():
            images = cls.generate(model.base.model, model.text, [prompt] * batch_size,
                                  [seed + i for i in range(batch_size)], steps=steps, callback=after_each_step,
                                  **options)
        return io.NodeOutput(enlarged(images, upscale))

    @staticmethod
    def schema(node_id: str, display_name: str, description: str, inputs: list, output_tooltip: str) -> io.Schema:
        return io.Schema(node_id=node_id, display_name=display_name, category=CATEGORY, description=description,
                         inputs=inputs, hidden=[io.Hidden.unique_id],
                         outputs=[io.Image.Output("IMAGE", display_name="IMAGE", tooltip=output_tooltip)])


class OneStepSample(_Sample):
    generate = staticmethod(generate_student)

    @classmethod
    def define_schema(cls):
        return cls.schema(
            "EchoDistillOneStepSample", "EchoDistill One-Step Sample",
            "Draw the personalized subject with the one-step student: one network evaluation per image.",
            sampler_inputs(ONE_STEP_MODEL, "From EchoDistill Train or EchoDistill Load Personalized.", io.Int.Input(
                "steps", default=1, min=1, max=4, tooltip="1 is the one-step model; 2-4 refine with Euler "
                "ancestral steps.")),
            "The student's images (enlarged by upscale).")


class TeacherSample(_Sample):
    @staticmethod
    def generate(model, text, prompts, seeds, steps, cfg, callback=None):
        return generate_teacher(model, text, prompts, seeds, steps=steps, guidance_scale=cfg, callback=callback)

    @classmethod
    def define_schema(cls):
        return cls.schema(
            "EchoDistillTeacherSample", "EchoDistill Teacher Sample",
            "Draw the personalized subject with the multi-step teacher (DDIM with CFG), to compare; a progress bar "
            "counts its steps and Cancel stops it.",
            sampler_inputs(PERSONALIZED_TEACHER, "The teacher output of EchoDistill Train or EchoDistill Load "
                           "Personalized.", io.Int.Input("steps", default=TEACHER_SAMPLE_STEPS, min=1, max=200,
                                                      tooltip="DDIM steps."),
                           io.Float.Input("cfg", default=PAPER_GUIDANCE, min=1.0, max=30.0, step=0.1,
                                          tooltip="Classifier-free guidance scale.")),
            "The teacher's images (enlarged by upscale).")
