"""Which Stable Diffusion family a single-file checkpoint belongs to, told from its keys and shapes.

A `.safetensors` checkpoint carries weights but no config, so the family decides which bundled
config folder (`assets/families/`, sources in its SOURCES.md) builds the models. The text encoder's
key prefix separates the layouts:

| prefix of the text encoder                         | layout                                   |
| -------------------------------------------------- | ---------------------------------------- |
| `cond_stage_model.transformer.`                    | SD 1.x (CLIP ViT-L)                      |
| `cond_stage_model.model.`                          | SD 2.x (OpenCLIP ViT-H), also as ComfyUI saves SD-Turbo |
| `conditioner.embedders.0.model.`, no UNet label_emb | SD-Turbo as Stability publishes it       |
| `conditioner.embedders.0.transformer.` + `.1.model.` | SDXL and SDXL-Turbo                    |

Within a layout the weights cannot tell everything apart: SD 2.1-base, SD 2.1-768-v and SD-Turbo share
one architecture, as do SDXL and SDXL-Turbo. Then, in order: the family the user chose; the role
(a one-step student is a Turbo model); the `v_pred` marker ComfyUI's CheckpointSave writes; the
publishing layout (only SD-Turbo ships with the `conditioner.` prefix); and last ComfyUI's own
heuristic for v-prediction (a spread-out `norm1.bias` in the last output block).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

FAMILIES_FOLDER = Path(__file__).parent / "assets" / "families"

UNET = "model.diffusion_model."
TEXT_PREFIXES = {
    "sd1": "cond_stage_model.transformer.",
    "sd2": "cond_stage_model.model.",
    "sgm": "conditioner.embedders.0.model.",
    "sdxl": "conditioner.embedders.1.model.",
}
V_PRED_MARKER = "v_pred"  # an empty tensor ComfyUI adds when it saves a v-prediction model
V_PRED_NORM_KEY = UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_PRED_STD = 0.09  # ComfyUI's threshold (comfy/supported_models.py, SD20.model_type)


@dataclass(frozen=True)
class Family:
    name: str  # the bundled config folder
    label: str  # what the user sees
    text_encoder: str  # teacher and student must share this to be trained together
    one_step: bool  # a Turbo model: it samples in one step from the last timestep
    trainable: bool = True
    pad_token: str = "<|endoftext|>"  # SD 2 pads with "!", like OpenCLIP

    @property
    def config(self) -> Path:
        return FAMILIES_FOLDER / self.name


FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family("sd1", "SD 1.x", "CLIP ViT-L/14", one_step=False),
    Family("sd2-512", "SD 2.x 512 (epsilon)", "OpenCLIP ViT-H/14", one_step=False, pad_token="!"),
    Family("sd2-768-v", "SD 2.x 768 (v-prediction)", "OpenCLIP ViT-H/14", one_step=False, pad_token="!"),
    Family("sd-turbo", "SD-Turbo", "OpenCLIP ViT-H/14", one_step=True, pad_token="!"),
    Family("sdxl", "SDXL", "CLIP ViT-L/14 + OpenCLIP ViT-bigG/14", one_step=False, trainable=False),
    Family("sdxl-turbo", "SDXL-Turbo", "CLIP ViT-L/14 + OpenCLIP ViT-bigG/14", one_step=True, trainable=False),
)}
LAYOUT_FAMILIES = {  # the families each layout may hold
    "sd1": ("sd1",),
    "sd2": ("sd2-512", "sd2-768-v", "sd-turbo"),
    "sgm": ("sd-turbo", "sd2-512", "sd2-768-v"),
    "sdxl": ("sdxl", "sdxl-turbo"),
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with what is wrong and what to do."""


def family_by_label(label: str) -> Family:
    """The family of a name or a display label ("SD-Turbo" or "sd-turbo")."""
    for family in FAMILIES.values():
        if label in (family.name, family.label):
            return family
    raise CheckpointError(f"unknown model family {label!r}; known: {', '.join(FAMILIES)}")


def text_layout(state_dict: dict[str, torch.Tensor], source: str = "the checkpoint") -> str:
    """The key layout of a full checkpoint: "sd1", "sd2", "sgm" or "sdxl" (see the module's table)."""
    if not any(key.startswith(UNET) for key in state_dict):
        raise CheckpointError(
            f"{source} holds no UNet (no {UNET!r} keys): it is not a full Stable Diffusion checkpoint. "
            "LoRAs go in models/loras, VAEs in models/vae, embeddings in models/embeddings; EchoDistill "
            "needs a full checkpoint from models/checkpoints or a diffusers folder"
        )
    present = {layout for layout, prefix in TEXT_PREFIXES.items() if any(key.startswith(prefix) for key in state_dict)}
    if "sdxl" in present:
        if not any(key.startswith("conditioner.embedders.0.transformer.") for key in state_dict):
            raise CheckpointError(f"{source} has SDXL's second text encoder but not its first; the file is incomplete")
        return "sdxl"
    if "sgm" in present:
        if UNET + "label_emb.0.0.weight" in state_dict:
            raise CheckpointError(
                f"{source} is an SDXL refiner, which has no CLIP ViT-L text encoder and cannot be personalized; "
                "use an SDXL base model or an SD 2.1 / SD-Turbo pair"
            )
        return "sgm"
    for layout in ("sd2", "sd1"):
        if layout in present:
            return layout
    raise CheckpointError(
        f"{source} has a UNet but no text encoder this pack knows (SD 1.x CLIP-L, SD 2.x OpenCLIP-H or SDXL's "
        "two). EchoDistill trains the text encoder's token, so it needs a full checkpoint that includes one"
    )


def detect_family(state_dict: dict[str, torch.Tensor], *, role: str | None = None, choice: str | None = None,
                  source: str = "the checkpoint") -> Family:
    """The family of a single-file checkpoint.

    `role` is "teacher" or "student" (a student must sample in one step, so an ambiguous layout is
    read as its Turbo family); `choice` is the user's explicit family, checked against the layout.
    """
    layout = text_layout(state_dict, source)
    _check_unet_matches_text(state_dict, layout, source)
    candidates = LAYOUT_FAMILIES[layout]
    if choice:
        family = family_by_label(choice)
        if family.name not in candidates:
            detected = ", ".join(FAMILIES[name].label for name in candidates)
            raise CheckpointError(
                f"{source} cannot be {family.label}: its weights are laid out as {detected}. Choose one of "
                "those, or 'auto-detect'"
            )
        return family
    turbo = [name for name in candidates if FAMILIES[name].one_step]
    v_prediction = layout == "sd2" and _looks_v_prediction(state_dict)  # SD-Turbo predicts epsilon
    if role == "student" and turbo and not v_prediction:  # the rest is refused by `check_role` as multi-step
        return FAMILIES[turbo[0]]
    if layout == "sdxl":
        return FAMILIES["sdxl"]
    if layout == "sgm":
        return FAMILIES["sd-turbo"]
    if layout == "sd2":
        return FAMILIES["sd2-768-v" if v_prediction else "sd2-512"]
    return FAMILIES["sd1"]


def _looks_v_prediction(state_dict: dict[str, torch.Tensor]) -> bool:
    if V_PRED_MARKER in state_dict:
        return True
    bias = state_dict.get(V_PRED_NORM_KEY)
    return bias is not None and torch.std(bias.float(), unbiased=False).item() > V_PRED_STD


def _text_width(state_dict: dict[str, torch.Tensor], layout: str) -> int:
    """The width the UNet's cross-attention reads: the text encoder's (SDXL: both, concatenated)."""
    keys = {
        "sd1": [TEXT_PREFIXES["sd1"] + "text_model.embeddings.token_embedding.weight"],
        "sd2": [TEXT_PREFIXES["sd2"] + "token_embedding.weight"],
        "sgm": [TEXT_PREFIXES["sgm"] + "token_embedding.weight"],
        "sdxl": ["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
                 TEXT_PREFIXES["sdxl"] + "token_embedding.weight"],
    }[layout]
    return sum(state_dict[key].shape[1] for key in keys if key in state_dict)


def _check_unet_matches_text(state_dict: dict[str, torch.Tensor], layout: str, source: str) -> None:
    """A file whose UNet reads text of another width than its text encoder's is a broken merge."""
    cross = [value.shape[1] for key, value in state_dict.items()
             if key.startswith(UNET) and key.endswith("attn2.to_k.weight")]
    width = _text_width(state_dict, layout)
    if cross and width and cross[0] != width:
        raise CheckpointError(
            f"{source}'s UNet reads text embeddings of width {cross[0]} but its text encoder gives {width}: "
            "the file mixes two model families (a broken merge?). Use an unmodified checkpoint"
        )


def check_role(family: Family, role: str | None, source: str = "the checkpoint") -> None:
    """A student must sample in one step; a teacher must be a multi-step model."""
    if role == "student" and not family.one_step:
        raise CheckpointError(
            f"{source} is {family.label}, a multi-step model, so it cannot draw in one step; choose a Turbo "
            "model (SD-Turbo for an SD 2.x teacher) as the student, or set its family if this one is a Turbo model"
        )
    if role == "teacher" and family.one_step:
        raise CheckpointError(
            f"{source} is {family.label}, a one-step model; the teacher must be a multi-step model of the same "
            "family (SD 2.1 or SD 2.1-base for SD-Turbo). If the file is SD 2.1, set its family in the loader"
        )


def pair_problem(teacher: Family, student: Family, teacher_name: str = "", student_name: str = "") -> str | None:
    """Why two families cannot be trained together (they share one text encoder), or None if they can."""
    if teacher.text_encoder == student.text_encoder:
        return None
    partners = [f.label for f in FAMILIES.values() if not f.one_step and f.text_encoder == student.text_encoder]
    named = (f" {teacher_name}", f" {student_name}") if teacher_name else ("", "")
    return (
        f"the {teacher.label} teacher{named[0]} ({teacher.text_encoder}) and the {student.label} "
        f"student{named[1]} ({student.text_encoder}) cannot share one text encoder; pair the "
        f"{student.label} student with an {' or '.join(partners)} teacher"
    )
