"""The one module that touches ComfyUI: progress, previews, cancel, devices, memory, stock models (in
and out), model folders, saving paths and messages to the browser.

Everything else in the pack calls these functions, and declares its nodes with the V3 `io` schema
re-exported here, so the pack needs ComfyUI (0.3.64 or later): this module is imported only where ComfyUI's
`comfy_api` is (the pack's `__init__.py`). Named for its host, not `comfy`, so as never to shadow ComfyUI's
own `comfy` package.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import torch
from comfy_api.latest import ComfyExtension, io  # the V3 node schema every node of the pack is declared with

import comfy.lora
import comfy.model_management as model_management
import comfy.model_patcher as model_patcher
import comfy.utils as comfy_utils
import folder_paths

try:  # a running ComfyUI server, which the browser talks to
    from server import PromptServer
except ImportError:  # ComfyUI's packages without its server (the nodes' tests)
    PromptServer = None



class Interrupted(Exception):
    """A run that stopped before its end without ComfyUI's own interruption being raised."""


def interruption_types() -> tuple[type[BaseException], ...]:
    return (model_management.InterruptProcessingException, Interrupted, KeyboardInterrupt)


def processing_interrupted() -> bool:
    """True once the user pressed Cancel in the browser."""
    return model_management.processing_interrupted()


def throw_if_interrupted() -> None:
    model_management.throw_exception_if_processing_interrupted()


def torch_device() -> torch.device:
    return model_management.get_torch_device()


def free_device_memory_for_training() -> None:
    """Unload ComfyUI's own models so training has the device to itself."""
    model_management.unload_all_models()
    model_management.soft_empty_cache()


# The pack's networks under ComfyUI's model management. Each frozen UNet, VAE and text encoder a loader gives
# is held by a ModelPatcher: it waits on ComfyUI's offload device (the CPU) and is loaded onto the device by
# load_models_gpu when a node uses it, so ComfyUI counts it among its loaded models and evicts it, as any of
# its own, when another model needs the room. A model's patchers live as long as the model does.
_PATCHERS: dict[int, list] = {}  # id(DiffusionModel or TextConditioner) -> its parts' ModelPatchers


class EchoDistillNetwork(torch.nn.Module):
    """One network of the pack as ComfyUI's model management moves it: ModelPatcher keeps the device it
    loaded a model to in the model's `device` attribute, which diffusers and transformers models compute."""

    def __init__(self, module: torch.nn.Module, label: str):
        super().__init__()
        self.module, self.label = module, label
        self.device = next(module.parameters()).device

    def get_dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype


def part_dtypes(device: torch.device) -> dict[str, torch.dtype]:
    """ComfyUI's own choice of dtype per part for its models on `device` (the UNet by unet_dtype, bf16 before
    fp16; the VAE by vae_dtype, bf16 or fp32 as for SD's VAE; the text encoder by text_encoder_dtype): what
    precision "auto" loads on an accelerator. The rule of each precision choice is the run recipe's
    (echodistill_core.recipe.frozen_dtype)."""
    preference = [torch.bfloat16, torch.float16, torch.float32]
    return {"unet": model_management.unet_dtype(device, supported_dtypes=preference),
            "vae": model_management.vae_dtype(device, allowed_dtypes=[torch.bfloat16]),
            "text_encoder": model_management.text_encoder_dtype(device)}


def offload_device() -> torch.device:
    """Where a loader puts the frozen weights: ComfyUI's offload device (the CPU unless it keeps everything on
    the GPU)."""
    return model_management.unet_offload_device()


def manage(role: str, model=None, text=None) -> None:
    """Hand a loaded model's UNet and VAE (a DiffusionModel) and text encoder (a TextConditioner) to ComfyUI's
    model management, each as a ModelPatcher that loads onto the device and offloads to the CPU."""
    device = torch_device()
    for owner, parts in ((model, (("unet", model_management.unet_offload_device()),
                                  ("vae", model_management.vae_offload_device()))),
                         (text, (("text_encoder", model_management.text_encoder_offload_device()),))):
        if owner is None or id(owner) in _PATCHERS:
            continue
        patchers = [model_patcher.ModelPatcher(EchoDistillNetwork(module, f"{role} {part.replace('_', ' ')}"),
                                               load_device=device, offload_device=offload)
                    for part, offload in parts if (module := getattr(owner, part, None)) is not None]
        _PATCHERS[id(owner)] = patchers
        weakref.finalize(owner, _PATCHERS.pop, id(owner), None)


def use(models=(), texts=(), training: bool = False, personalization=None) -> None:
    """Load the networks a node is about to run (DiffusionModels, TextConditioners) onto the device through
    ComfyUI, which first evicts other models as their room is needed. `training` first unloads every other
    model ComfyUI holds, whether needed or not: a training step needs far more than its weights. A
    `personalization` (an nn.Module of adapters and the token) follows the models onto the device."""
    patchers = [patcher for owner in (*models, *texts) for patcher in _PATCHERS.get(id(owner), [])]
    with torch.inference_mode(False):  # weights moved here stay usable for training
        if training:
            keep = [model_management.LoadedModel(patcher) for patcher in patchers]
            model_management.free_memory(1e30, torch_device(), keep_loaded=keep)
            model_management.soft_empty_cache()
        if patchers:
            model_management.load_models_gpu(patchers, force_full_load=True)
        if personalization is not None:
            personalization.to(torch_device())


def checkpoint_weights(model, clip, vae, dtype: torch.dtype | dict[str, torch.dtype]) -> dict[str, torch.Tensor]:
    """A stock MODEL, CLIP and VAE as the single-file checkpoint ComfyUI's CheckpointSave would write them
    (LoRAs and other patches applied), copied to the CPU in `dtype` as ordinary tensors (not inference
    tensors, so they can be the frozen weights of a training); ComfyUI's models then leave the GPU."""
    model_management.load_models_gpu([model, clip.load_model()], force_patch_weights=True)
    weights = model.model.state_dict_for_saving(clip.get_sd(), vae.get_sd(), None)
    copies = {}
    with torch.inference_mode(False):
        for key in list(weights):
            value = weights.pop(key)
            wanted = dtype if isinstance(dtype, torch.dtype) else _part_dtype(dtype, key)
            copies[key] = value.detach().to("cpu", wanted if value.is_floating_point() else value.dtype, copy=True)
    free_device_memory_for_training()  # ComfyUI's copy leaves the GPU before ours arrives
    return copies


def _part_dtype(dtypes: dict[str, torch.dtype], key: str) -> torch.dtype:
    """A single-file key's dtype among part_dtypes' parts: the UNet's, the VAE's, else the text encoder's."""
    if key.startswith("model.diffusion_model."):
        return dtypes["unet"]
    return dtypes["vae"] if key.startswith("first_stage_model.") else dtypes["text_encoder"]


def model_kind(model) -> str:
    """What ComfyUI recognised a stock MODEL as (e.g. SD20, for SD 2.x and SD-Turbo), for messages."""
    return type(model.model.model_config).__name__


def with_lora(model, lora: dict[str, torch.Tensor], strength: float = 1.0):
    """A clone of the stock MODEL with `lora` (kohya names) as weight patches, as LoraLoader applies it. Every
    key must find its layer: a LoRA that does not fit the model is refused, not half applied."""
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    stems = {key.split(".", 1)[0] for key in lora}
    unknown = sorted(stems - set(key_map))
    if unknown:
        raise ValueError(f"{len(unknown)} of the personalization's {len(stems)} layers (e.g. {unknown[0]}) are not "
                         f"in this {model_kind(model)} MODEL; connect the student the result was trained on")
    patched = model.clone()
    applied = patched.add_patches(comfy.lora.load_lora(lora, key_map, log_missing=False), strength)
    if len(applied) != len(stems):
        raise ValueError(f"only {len(applied)} of the personalization's {len(stems)} layers could be patched into "
                         f"this {model_kind(model)} MODEL; connect the student the result was trained on")
    return patched


def lora_layer_weights(model, lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The stock MODEL's own weights of the layers `lora` (kohya names) patches, by kohya name, as float32 CPU
    copies; layers it does not have are left out."""
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    weights = model.model.state_dict()
    stems = {key.split(".", 1)[0] for key in lora}
    return {stem: weights[key_map[stem]].detach().to("cpu", torch.float32, copy=True)
            for stem in stems if stem in key_map and key_map[stem] in weights}


def prediction_type(model) -> str:
    """What the stock MODEL predicts, in diffusers' words (epsilon, v_prediction), or ComfyUI's name of it."""
    kind = model.model.model_type.name
    return {"EPS": "epsilon", "V_PREDICTION": "v_prediction"}.get(kind, kind.lower())


def release_device_memory() -> None:
    model_management.soft_empty_cache()


class Progress:
    """ComfyUI's progress bar with previews; every update also raises if the user pressed Cancel."""

    def __init__(self, total: int, node_id: str | None = None):
        self.total = total
        self.bar = comfy_utils.ProgressBar(total, node_id=node_id)

    def update(self, step: int, preview=None) -> None:
        if preview is not None:
            self.bar.update_absolute(step, self.total, ("JPEG", preview, 512))
        else:
            self.bar.update_absolute(step, self.total)


def send_to_browser(event: str, data: dict) -> None:
    """A websocket message to the browser (the live training view listens for these)."""
    if PromptServer is not None and getattr(PromptServer, "instance", None) is not None:
        PromptServer.instance.send_sync(event, data)


# Model folders.
WEIGHTS_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def model_names(kind: str) -> list[str]:
    """Files (or folders, for "diffusers") in ComfyUI's model folder of `kind`."""
    if kind == "diffusers":
        return model_subfolders(kind)
    return list(folder_paths.get_filename_list(kind))


def model_subfolders(kind: str, holding: str | None = None) -> list[str]:
    """The folders directly inside ComfyUI's model folders of `kind` (only those with a file `holding`)."""
    names = []
    for root in folder_paths.get_folder_paths(kind):
        if os.path.isdir(root):
            names += sorted(name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name))
                            and (holding is None or os.path.isfile(os.path.join(root, name, holding))))
    return names


def weights_files(kind: str) -> list[str]:
    """The weights files (safetensors or pickles) in ComfyUI's model folders of `kind`, sub-folders included."""
    return [name for name in model_names(kind) if name.lower().endswith(WEIGHTS_SUFFIXES)]


def weights_and_model_folders(kind: str) -> list[str]:
    """A model folder's networks: transformers folders (those with a config.json) and weights files outside them."""
    folders = model_subfolders(kind, holding="config.json")
    return folders + [name for name in weights_files(kind) if Path(name).parts[0] not in folders]


def model_path(kind: str, name: str) -> Path | None:
    """The file, or folder, `name` in ComfyUI's model folders of `kind`."""
    path = folder_paths.get_full_path(kind, name)
    if path:
        return Path(path)
    for root in folder_paths.get_folder_paths(kind):
        if os.path.isdir(os.path.join(root, name)):
            return Path(root) / name
    return None


def output_directory() -> Path:
    return Path(folder_paths.get_output_directory())


def model_folder(kind: str) -> Path:
    """Where stock loaders look for `kind` ("loras", "embeddings"): the first configured folder."""
    return Path(folder_paths.get_folder_paths(kind)[0])


def refresh_model_list(kind: str) -> None:
    """Let a dropdown see a file written during this session."""
    if hasattr(folder_paths, "filename_list_cache"):
        folder_paths.filename_list_cache.pop(kind, None)


def safe_file_name(name: str) -> str:
    """A file name from user text: no folders, no leading dots, nothing outside ComfyUI's folders."""
    cleaned = "".join(c for c in name.strip() if c.isalnum() or c in " _-.").strip(" .")
    if not cleaned or cleaned != name.strip() or ".." in cleaned:
        raise ValueError(
            f"the name {name!r} must be a plain file name (letters, digits, spaces, - _ .), not a path; "
            "files go to ComfyUI's own folders"
        )
    return cleaned


def unused_path(folder: Path, stem: str, suffix: str = ".safetensors") -> Path:
    """`folder/stem.suffix`, or `stem_00001.suffix`... when taken: an existing file is never overwritten."""
    folder.mkdir(parents=True, exist_ok=True)
    path, counter = folder / f"{stem}{suffix}", 0
    while path.exists():
        counter += 1
        path = folder / f"{stem}_{counter:05d}{suffix}"
    return path


RESULTS_KIND = "echodistill"


def results_folder() -> Path:
    """`models/echodistill`: personalization results that Load Personalized lists."""
    return Path(folder_paths.get_folder_paths(RESULTS_KIND)[0])


def states_folder() -> Path:
    """Resumable training states, kept under the output folder."""
    return output_directory() / "echodistill_states"


IP_ADAPTER_KIND = "ipadapter"  # the folder kind ComfyUI's IP-Adapter packs use; stock ComfyUI has none
DINO_KIND = "dino"  # DINO and DINOv2 networks: this pack's own folder kind

# models/<kind>, unless ComfyUI, its extra_model_paths or another pack has it already
for _kind in (RESULTS_KIND, IP_ADAPTER_KIND, DINO_KIND):
    if _kind not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(_kind, os.path.join(folder_paths.models_dir, _kind))
