"""Load a diffusers-format folder (the bundled tiny models, or `models/diffusers/<name>`) offline,
or, through `load_model`, a folder or a single-file checkpoint alike.

A folder holds `unet/`, `scheduler/`, `text_encoder/`, `tokenizer/` and optionally `vae/`, as
`save_pretrained` writes them. Nothing is fetched from a hub: `local_files_only=True` throughout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

from .checkpoints import load_single_file
from .compat import transformers_dtype
from .models import DiffusionModel, TextConditioner, part_dtype
from .sampling import Progress
from .schedule import NoiseSchedule
from .clip_tokenizer import check_tokenizer, load_clip_tokenizer, write_slow_files

REQUIRED_PARTS = ("unet", "scheduler", "text_encoder", "tokenizer")
FOLDER_LOAD_STEPS = 3  # the UNet, the VAE (or its absence), the text encoder


class ModelFolderError(ValueError):
    """A model folder that is missing, incomplete or unreadable."""


def load_diffusers_folder(folder: str | Path, dtype: torch.dtype | dict[str, torch.dtype] = torch.float32,
                          device: str | torch.device = "cpu", role: str | None = None,
                          progress: Progress | None = None) -> tuple[DiffusionModel, TextConditioner]:
    """The folder's diffusion model and its text encoder, frozen, in `dtype` (or per part, see
    `models.part_dtype`) on `device`.

    A `role` of "student" is checked before any weight loads: the folder's scheduler must start sampling
    at the last timestep, as a one-step model's does. `progress(done, total)` is called after each of
    the UNet, the VAE and the text encoder (FOLDER_LOAD_STEPS); it may raise to stop the load."""
    report = progress or (lambda done, total: None)
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist; pass a diffusers-format folder")
    missing = [part for part in REQUIRED_PARTS if not (folder / part).is_dir()]
    if missing:
        raise ModelFolderError(
            f"model folder {folder} has no {', '.join(missing)} subfolder; a diffusers-format folder needs "
            f"{', '.join(REQUIRED_PARTS)} (and vae/ for a latent model)"
        )
    options = dict(local_files_only=True)
    try:
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        if role == "student":
            check_one_step(scheduler, folder.name)
        schedule = NoiseSchedule.from_scheduler_config(scheduler)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=part_dtype(dtype, "unet"),
                                                    **options)
        report(1, FOLDER_LOAD_STEPS)
        vae = None
        if (folder / "vae").is_dir():
            vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=part_dtype(dtype, "vae"),
                                                **options)
        report(2, FOLDER_LOAD_STEPS)
        text_encoder = load_text_encoder(folder / "text_encoder", part_dtype(dtype, "text_encoder"))
        report(3, FOLDER_LOAD_STEPS)
        tokenizer = load_clip_tokenizer(folder / "tokenizer")
    except ModelFolderError:
        raise
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelFolderError(f"could not load the model folder {folder}: {error}") from error
    check_tokenizer(tokenizer, folder / "tokenizer")
    for module in (unet, vae, text_encoder):
        if module is not None:
            module.requires_grad_(False).eval().to(device)
    model = DiffusionModel(unet=unet, schedule=schedule, vae=vae, name=folder.name)
    return model, TextConditioner(tokenizer=tokenizer, text_encoder=text_encoder)


def load_model(path: str | Path, role: str | None = None, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> tuple[DiffusionModel, TextConditioner]:
    """A diffusers folder or a single-file checkpoint (its family detected, see `checkpoints.py`)."""
    if Path(path).is_dir():
        return load_diffusers_folder(path, dtype=dtype, device=device, role=role)
    model, text, _ = load_single_file(path, role=role, dtype=dtype, device=device)
    return model, text


def check_one_step(scheduler_config: dict, name: str) -> None:
    """A one-step model's scheduler samples from the last timestep ("trailing" spacing, as SD-Turbo's)."""
    if scheduler_config.get("timestep_spacing") != "trailing":
        raise ModelFolderError(
            f"{name} is a multi-step model (its scheduler starts sampling below the last timestep), so it "
            "cannot draw in one step; choose a one-step model such as SD-Turbo as the student, and use "
            f"{name} as the teacher"
        )


def save_diffusers_folder(folder: str | Path, model: DiffusionModel, text: TextConditioner,
                          scheduler) -> None:
    """Write a model in the layout `load_diffusers_folder` reads (safetensors weights), which transformers 4
    and 5 both read: the text encoder's weights under `text_model.` (as transformers 4 and the published SD
    folders have them; transformers 5 writes them without), the tokenizer as tokenizer.json and CLIP's own
    vocab.json and merges.txt (transformers 5 writes only the first)."""
    folder = Path(folder)
    model.unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    text.text_encoder.save_pretrained(folder / "text_encoder")
    prefix_text_encoder_weights(folder / "text_encoder")
    text.tokenizer.save_pretrained(folder / "tokenizer")
    write_slow_files(folder / "tokenizer")
    if model.vae is not None:
        model.vae.save_pretrained(folder / "vae")


TEXT_MODEL_PREFIX = "text_model."


def prefix_text_encoder_weights(folder: str | Path) -> None:
    """Put a CLIPTextModel's saved weights under `text_model.`, the names every transformers version reads."""
    path = Path(folder) / "model.safetensors"
    with safe_open(path, "pt") as file:
        metadata = file.metadata()
    weights = load_file(path)
    if all(key.startswith(TEXT_MODEL_PREFIX) for key in weights):
        return
    save_file({key if key.startswith(TEXT_MODEL_PREFIX) else TEXT_MODEL_PREFIX + key: value
               for key, value in weights.items()}, path, metadata=metadata or {"format": "pt"})


def load_text_encoder(folder: Path, dtype: torch.dtype) -> CLIPTextModel:
    """A transformers CLIPTextModel folder whose weights are named with or without `text_model.`: transformers 5
    reads both, transformers 4 only the first and would leave the other's weights random, so they are given
    to the model by name here."""
    model = CLIPTextModel.from_pretrained(folder, local_files_only=True, **transformers_dtype(dtype))
    path = folder / "model.safetensors"
    if not path.is_file():
        return model
    with safe_open(path, "pt") as file:
        saved = set(file.keys())
    expected = set(model.state_dict())
    if saved <= expected:
        return model
    strip = not any(key.startswith(TEXT_MODEL_PREFIX) for key in expected)
    renamed = {}
    for key, value in load_file(path).items():
        bare = key[len(TEXT_MODEL_PREFIX):] if key.startswith(TEXT_MODEL_PREFIX) else key
        renamed[bare if strip else TEXT_MODEL_PREFIX + bare] = value
    model.load_state_dict(renamed, strict=True)
    return model
