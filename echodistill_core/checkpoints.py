"""Single-file checkpoints (`models/checkpoints/*.safetensors`, `.ckpt`) as a teacher or a student, offline.

The file is read once, safely: safetensors directly, pickles only with `torch.load(weights_only=True)`,
which refuses to run code. Its family (`families.py`) picks the bundled config folder, and diffusers
builds each part from it with `from_single_file(..., config=<folder>, local_files_only=True)`, so no
hub is ever asked. The tokenizer is CLIP's, built from the vendored merges with the family's padding.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import CLIPTextModel

from .families import CheckpointError, Family, check_role, detect_family
from .models import DiffusionModel, TextConditioner
from .schedule import NoiseSchedule
from .tokenizer import build_clip_tokenizer

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint file, on the CPU. Raises CheckpointError naming the file and the fault."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; put the checkpoint in ComfyUI's models/checkpoints folder")
    if path.suffix.lower() not in SUFFIXES:
        raise CheckpointError(f"{path.name} is not a checkpoint file this pack reads ({', '.join(SUFFIXES)})")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name} is empty (0 bytes): the download or copy did not finish; fetch it again")
    if path.suffix.lower() == ".safetensors":
        try:
            state_dict = load_file(path)
        except SafetensorError as error:
            raise CheckpointError(
                f"{path.name} is corrupt or truncated ({error}); download it again"
            ) from error
    else:
        state_dict = _read_pickle(path)
    if not state_dict:
        raise CheckpointError(f"{path.name} holds no tensors")
    return state_dict


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A `.ckpt`/`.pt` file's tensors through torch's weights-only unpickler, which never runs code."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path.name} is a pickle that holds more than weights (code or unknown objects), and EchoDistill "
            "never executes a pickle. Use a .safetensors version of this model"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"{path.name} is corrupt or truncated ({error}); download it again") from error
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]  # the Lightning checkpoints Stability published
    if not isinstance(content, dict):
        raise CheckpointError(f"{path.name} holds a {type(content).__name__}, not a dictionary of weights")
    return {key: value for key, value in content.items() if isinstance(value, torch.Tensor)}


def load_single_file(path: str | Path, *, role: str | None = None, family: str | None = None,
                     dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                     config: str | Path | None = None) -> tuple[DiffusionModel, TextConditioner, Family]:
    """A checkpoint's diffusion model and text encoder, frozen, in `dtype` on `device`, and its family.

    `role` ("teacher"/"student") and `family` (a name or label, or None to detect) decide ambiguous
    layouts (see `families.detect_family`). `config` replaces the family's bundled config folder, for
    checkpoints of the same layout but other sizes (the tests' shrunk ones).
    """
    path = Path(path)
    state_dict = read_checkpoint(path)
    found = detect_family(state_dict, role=role, choice=family, source=path.name)
    check_role(found, role, path.name)
    if not found.trainable:
        raise CheckpointError(
            f"{path.name} is {found.label}. SDXL pairs (two text encoders, added conditioning) are recognised "
            "but not yet supported for training; use SD 2.1 as the teacher and SD-Turbo as the student"
        )
    folder = str(config or found.config)
    options = dict(config=folder, local_files_only=True, torch_dtype=dtype)
    try:
        unet = UNet2DConditionModel.from_single_file(state_dict, subfolder="unet", **options)
        vae = AutoencoderKL.from_single_file(state_dict, subfolder="vae", **options)
        text_encoder = create_diffusers_clip_model_from_ldm(
            CLIPTextModel, _with_open_clip_prefix(state_dict), subfolder="text_encoder", **options
        )
    except (ValueError, RuntimeError, KeyError) as error:
        raise CheckpointError(
            f"{path.name} was taken for {found.label} but its weights do not fit that architecture ({error}). "
            "If it is another model, choose its family in the loader"
        ) from error
    schedule = NoiseSchedule.from_scheduler_config(
        json.loads((Path(folder) / "scheduler" / "scheduler_config.json").read_text())
    )
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False).eval().to(device)
    model = DiffusionModel(unet=unet, schedule=schedule, vae=vae, name=path.name, family=found.name)
    return model, TextConditioner(build_clip_tokenizer(pad_token=found.pad_token), text_encoder), found


def _with_open_clip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SD-Turbo's text encoder under SD 2's prefix, the one diffusers converts as OpenCLIP-H.

    Turbo files keep it under `conditioner.embedders.0.model.`, which diffusers takes for an SDXL
    refiner's OpenCLIP-bigG. Only the names change; no tensor is copied.
    """
    sgm, sd2 = "conditioner.embedders.0.model.", "cond_stage_model.model."
    if not any(key.startswith(sgm) for key in state_dict):
        return state_dict
    return {(sd2 + key[len(sgm):] if key.startswith(sgm) else key): value for key, value in state_dict.items()}
