"""Single-file checkpoints (`models/checkpoints/*.safetensors`, `.ckpt`) as a teacher or a student, offline.

The file is read once, safely: safetensors directly, pickles only with `torch.load(weights_only=True)`,
which refuses to run code. Its family (`families.py`) picks the bundled config folder; each part is
built from that config on the meta device and handed the file's weights, renamed by diffusers' own
key maps, so no hub is ever asked and no random initialisation runs. The tokenizer is CLIP's, built
from the vendored merges with the family's padding.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

from .families import CheckpointError, Family, check_role, detect_family
from .models import DiffusionModel, TextConditioner, part_dtype
from .sampling import Progress
from .schedule import NoiseSchedule
from .clip_tokenizer import FULL_NUM_MERGES, build_clip_tokenizer

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
    return _tensors(content)


def _tensors(content: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a dictionary, nested ones under dotted keys: IP-Adapter's `.bin` holds
    {"image_proj": {...}, "ip_adapter": {...}}, whose keys are then those of its `.safetensors` twin."""
    tensors = {}
    for key, value in content.items():
        if isinstance(value, torch.Tensor):
            tensors[f"{prefix}{key}"] = value
        elif isinstance(value, dict):
            tensors |= _tensors(value, f"{prefix}{key}.")
    return tensors


def load_single_file(path: str | Path, *, role: str | None = None, family: str | None = None,
                     dtype: torch.dtype | dict[str, torch.dtype] = torch.float32, device: str | torch.device = "cpu",
                     config: str | Path | None = None, progress: Progress | None = None
                     ) -> tuple[DiffusionModel, TextConditioner, Family]:
    """A checkpoint's diffusion model and text encoder, frozen, in `dtype` (or per part, see
    `models.part_dtype`) on `device`, and its family.

    `role` ("teacher"/"student") and `family` (a name or label, or None to detect) decide ambiguous
    layouts (see `families.detect_family`). `config` replaces the family's bundled config folder, for
    checkpoints of the same layout but other sizes (the tests' shrunk ones). `progress(done, total)` is
    called after reading the file and after each part (the UNet, the VAE, the text encoder); it may
    raise to stop the load.
    """
    path = Path(path)
    state_dict = read_checkpoint(path)
    if progress is not None:
        progress(1, LOAD_STEPS)
    return load_state_dict(state_dict, path.name, role=role, family=family, dtype=dtype, device=device,
                           config=config, progress=progress)


LOAD_STEPS = 4  # reading the file, then the UNet, the VAE and the text encoder


def load_state_dict(state_dict: dict[str, torch.Tensor], name: str, *, role: str | None = None,
                    family: str | None = None, dtype: torch.dtype | dict[str, torch.dtype] = torch.float32,
                    device: str | torch.device = "cpu", config: str | Path | None = None,
                    progress: Progress | None = None) -> tuple[DiffusionModel, TextConditioner, Family]:
    """`load_single_file` for weights already in memory in a checkpoint's layout (e.g. a model that
    ComfyUI loaded, as its CheckpointSave would write it); `name` names them in messages."""
    found = detect_family(state_dict, role=role, choice=family, source=name)
    check_role(found, role, name)
    if not found.trainable:
        raise CheckpointError(
            f"{name} is {found.label}. SDXL pairs (two text encoders, added conditioning) are recognised "
            "but not yet supported for training; use SD 2.1 as the teacher and SD-Turbo as the student"
        )
    folder = str(config or found.config)
    try:
        report = progress or (lambda done, total: None)
        unet = _assembled(UNet2DConditionModel, Path(folder) / "unet", convert_ldm_unet_checkpoint, state_dict,
                          part_dtype(dtype, "unet"))
        report(2, LOAD_STEPS)
        vae = _assembled(AutoencoderKL, Path(folder) / "vae", convert_ldm_vae_checkpoint, state_dict,
                         part_dtype(dtype, "vae"))
        report(3, LOAD_STEPS)
        text_encoder = _text_encoder(state_dict, Path(folder), part_dtype(dtype, "text_encoder"), name)
        report(4, LOAD_STEPS)
    except (ValueError, RuntimeError, KeyError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(
            f"{name} was taken for {found.label} but its weights do not fit that architecture "
            f"({_first_problem(error)}). If it is another model, choose its family in the loader"
        ) from error
    schedule = NoiseSchedule.from_scheduler_config(
        json.loads((Path(folder) / "scheduler" / "scheduler_config.json").read_text())
    )
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False).eval().to(device)
    model = DiffusionModel(unet=unet, schedule=schedule, vae=vae, name=name, family=found.name)
    return model, TextConditioner(_tokenizer(text_encoder, found), text_encoder), found


def _assembled(cls, folder: Path, convert, state_dict: dict[str, torch.Tensor], dtype: torch.dtype):
    """A diffusers model of the config in `folder` holding exactly the checkpoint's weights, renamed by
    diffusers' own key map: built on the meta device and handed the weights (strictly), so no random
    initialisation runs (the weights are copied only to change their dtype). The text encoder is still
    built the ordinary way: its position ids are a buffer outside the state dict."""
    config = cls.load_config(folder)
    converted = convert(state_dict, config)
    with torch.device("meta"):
        model = cls.from_config(config)
    model.load_state_dict({key: value.to(dtype) for key, value in converted.items()}, strict=True, assign=True)
    left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left:  # a buffer this diffusers version keeps outside the state dict
        raise CheckpointError(f"{len(left)} {cls.__name__} tensors (e.g. {left[0]}) are not in the checkpoint; "
                              "this diffusers version builds the model differently: report it with its version")
    return model


def _first_problem(error: Exception) -> str:
    """The first of torch's load_state_dict complaints, and how many more there are."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    problems = [line for line in lines if "mismatch" in line or line.startswith(("Missing", "Unexpected"))]
    if not problems:
        return lines[0] if lines else type(error).__name__
    more = f", and {len(problems) - 1} more" if len(problems) > 1 else ""
    return problems[0].rstrip(".") + more


def _text_encoder(state_dict: dict[str, torch.Tensor], folder: Path, dtype: torch.dtype, name: str) -> CLIPTextModel:
    """The text encoder, converted by diffusers' own key maps and loaded strictly.

    (diffusers' loader for it is lenient: a missing key would silently keep its random value.)
    SD-Turbo files keep OpenCLIP-H under `conditioner.embedders.0.model.`; it converts as SD 2's.
    """
    model = CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder", local_files_only=True))
    open_clip = next((prefix for prefix in ("cond_stage_model.model.", "conditioner.embedders.0.model.")
                      if prefix + "token_embedding.weight" in state_dict), None)
    if open_clip:
        converted = convert_open_clip_checkpoint(model, state_dict, prefix=open_clip)
    else:
        converted = convert_ldm_clip_checkpoint(state_dict)
    prefix = "text_model." if any(key.startswith("text_model.") for key in model.state_dict()) else ""  # transformers 4
    converted = {prefix + key.removeprefix("text_model."): value for key, value in converted.items()}
    result = model.load_state_dict(converted, strict=False)
    missing = [key for key in result.missing_keys if not key.endswith("position_ids")]
    if missing:
        raise CheckpointError(
            f"{name} lacks {len(missing)} text encoder weights (e.g. {missing[0]}): the file is incomplete or "
            "not the family it looks like; download it again or choose its family"
        )
    return model.to(dtype)


def _tokenizer(text_encoder: CLIPTextModel, family: Family):
    """CLIP's tokenizer with the family's padding, cut to the text encoder's vocabulary (all of it for
    the real models; the tests' shrunk models have the first merges only)."""
    merges = min(text_encoder.config.vocab_size - 2 * 256 - 2, FULL_NUM_MERGES)
    return build_clip_tokenizer(merges, pad_token=family.pad_token)
