"""Stock sockets in and out: a teacher or student from the MODEL, CLIP and VAE a stock loader already
holds, and the personalized student back as a stock MODEL (its learned layers as LoRA patches), a
LORA_MODEL, and CONDITIONING that understands the token, for KSampler, SamplerCustom or any other node."""

from __future__ import annotations

import torch

from ..echodistill_core.checkpoints import load_state_dict
from ..echodistill_core.export import kohya_name, student_lora_tensors
from ..echodistill_core.families import FAMILIES
from . import comfyui_host as host
from .comfyui_host import io
from .loaders import AUTO_FAMILY, FAMILY_CHOICES, StudentRole, TeacherRole, model_dtypes, precision_input
from .results import one_step_model_input
from .sampling import check_token
from .sockets import CATEGORY, LoadedModel, Personalized

WEIGHT_TOLERANCE = 0.1  # how far a stock MODEL's weights of the patched layers may be from the student's (a LoRA in it)


class _FromCheckpoint(io.ComfyNode):
    ABOUT = ""  # the node's description

    @classmethod
    def define_schema(cls):
        role = cls.ROLE.capitalize()
        return io.Schema(
            node_id=f"EchoDistill{role}FromCheckpoint", display_name=f"EchoDistill {role} from Checkpoint",
            category=CATEGORY, description=cls.ABOUT, inputs=[
                io.Model.Input("model", tooltip=f"The {cls.ROLE}'s MODEL from a stock loader (Load Checkpoint). "
                               f"{cls.EXAMPLE} LoRAs already applied to it are trained on as part of it."),
                io.Clip.Input("clip", tooltip="The CLIP of the same checkpoint. Teacher and student share the "
                              "teacher's text encoder, so a LoRA on the student's CLIP is not used."),
                io.Vae.Input("vae", tooltip="The VAE of the same checkpoint."),
                io.Combo.Input("family", options=FAMILY_CHOICES, default=AUTO_FAMILY, tooltip="Which model family "
                               "it is. auto-detect reads it from the weights (v-prediction as ComfyUI found it); a "
                               "student is taken as Turbo."),
                precision_input(),
            ], outputs=[cls.output()])

    @classmethod
    def execute(cls, model, clip, vae, family, precision):
        name = f"the {cls.ROLE}'s {host.model_kind(model)} MODEL"
        dtype = model_dtypes(precision, host.torch_device())
        with torch.inference_mode(False):  # weights made here must be usable for training later
            weights = host.checkpoint_weights(model, clip, vae, dtype)
            diffusion, text, found = load_state_dict(
                weights, name, role=cls.ROLE, family=None if family == AUTO_FAMILY else family, dtype=dtype,
                device=host.offload_device())
        del weights
        host.manage(cls.ROLE, diffusion, text)
        host.release_device_memory()
        return io.NodeOutput(LoadedModel(diffusion, text, f"{found.label} ({name})", family=found.name))


class TeacherFromCheckpoint(TeacherRole, _FromCheckpoint):
    ABOUT = ("Use a checkpoint a stock loader already loaded as the multi-step teacher (e.g. SD 2.1), instead of "
             "loading it a second time.")


class StudentFromCheckpoint(StudentRole, _FromCheckpoint):
    ABOUT = ("Use a checkpoint a stock loader already loaded as the one-step student (e.g. SD-Turbo), instead of "
             "loading it a second time.")


def student_layer_weights(student: LoadedModel, lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's own weights of the layers `lora` patches, by kohya name, as float32 CPU copies."""
    stems = {key.split(".", 1)[0] for key in lora}
    return {kohya_name(path): module.weight.detach().to("cpu", torch.float32, copy=True)
            for path, module in student.model.unet.named_modules() if kohya_name(path) in stems}


def stock_model_problem(student: LoadedModel, own: dict[str, torch.Tensor], stock: dict[str, torch.Tensor],
                        prediction: str, kind: str) -> str | None:
    """Why a stock MODEL (its weights `stock` of the layers the personalization patches, what it predicts and
    ComfyUI's name for its kind) is not the student the personalization was trained on (`own`, its weights of
    the same layers); None when it is. Layer names alone do not tell SD 2.1 from SD-Turbo or SD 1.x from SD 2.x."""
    family = FAMILIES[student.family].label if student.family in FAMILIES else "the student"
    this = f"this {kind} MODEL"
    advice = (f"connect the MODEL of the checkpoint the student was loaded from ({student.name}), as Load Checkpoint "
              "gives it")
    missing = sorted(set(own) - set(stock))
    if missing:
        return (f"{len(missing)} of the personalization's {len(own)} layers (e.g. {missing[0]}) are not in {this}, "
                f"so it is not a {family} model; {advice}")
    for stem, weight in own.items():
        if stock[stem].shape != weight.shape:
            return (f"{this} is another architecture than the {family} student the personalization was trained on "
                    f"({stem} is {tuple(stock[stem].shape)} in it, {tuple(weight.shape)} in the student); {advice}")
    expected = student.model.schedule.prediction_type
    if prediction != expected:
        return (f"{this} predicts {prediction}, the {family} student the personalization was trained on predicts "
                f"{expected} (SD 2.1 768 is v-prediction, SD-Turbo epsilon); {advice}")
    difference = sum(float((stock[stem] - weight).square().sum()) for stem, weight in own.items()) ** 0.5 / \
        max(sum(float(weight.square().sum()) for weight in own.values()) ** 0.5, 1e-12)
    if difference > WEIGHT_TOLERANCE:
        return (f"{this} is a model of the same shape but not the {family} student the personalization was trained "
                f"on: the layers it patches differ by {difference:.0%} (SD 2.1-base and SD-Turbo look alike); "
                f"{advice}")
    return None


class PersonalizedModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoDistillPersonalizedModel", display_name="EchoDistill Personalized Model", category=CATEGORY,
            description="The personalized student as a stock MODEL: its learned layers become LoRA patches of the "
                        "student's MODEL, as Load LoRA applies a file, without saving anything.",
            inputs=[
                one_step_model_input("one_step_model"),
                io.Model.Input("model", tooltip="The student's MODEL as a stock loader loaded it (the checkpoint the "
                               "student was trained from)."),
                io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05, tooltip="How much of the "
                               "learned change to apply; 1.0 is what was trained."),
            ],
            outputs=[
                io.Model.Output("patched_model", display_name="model", tooltip="The stock MODEL with the student's learned "
                                "layers patched in, for KSampler or SamplerCustom (SD-Turbo: 1 step, cfg 1.0). "
                                "Condition it with EchoDistill Encode Prompt."),
                io.LoraModel.Output("lora", display_name="lora", tooltip="The same change as a LORA_MODEL, for core "
                                    "nodes such as Load LoRA Model."),
            ])

    @classmethod
    def execute(cls, one_step_model: Personalized, model, strength):
        with torch.inference_mode(False):
            lora = student_lora_tensors(one_step_model.personalization, one_step_model.base.model.unet,
                                        dtype=torch.float32)
        problem = stock_model_problem(one_step_model.base, student_layer_weights(one_step_model.base, lora),
                                      host.lora_layer_weights(model, lora), host.prediction_type(model),
                                      host.model_kind(model))
        if problem:
            raise ValueError(problem)
        return io.NodeOutput(host.with_lora(model, lora, strength), lora)


class EncodePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="EchoDistillEncodePrompt", display_name="EchoDistill Encode Prompt", category=CATEGORY,
            description="Encode a prompt with the token, as the personalized student reads it, for stock samplers.",
            inputs=[
                one_step_model_input("one_step_model"),
                io.String.Input("text", multiline=True, default="a photo of a <sks> dog", tooltip="A prompt with "
                                "the token, e.g. a photo of a <my-dog> dog on the beach."),
            ],
            outputs=[io.Conditioning.Output("conditioning", display_name="conditioning", tooltip="The prompt through "
                                            "the personalized text encoder, which knows the token: the positive "
                                            "input of KSampler or SamplerCustom.")])

    @classmethod
    def execute(cls, one_step_model: Personalized, text):
        check_token(text, one_step_model.token)
        one_step_model.personalization.token.check_within_window(text)
        host.use(texts=[one_step_model.text], personalization=one_step_model.personalization)
        with torch.inference_mode(False), torch.no_grad(), one_step_model.applied():
            cond = one_step_model.text([text])
        return io.NodeOutput([[cond.float().cpu(), {}]])
