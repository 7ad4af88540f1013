"""The one module that touches ComfyUI: progress, previews, cancel, devices, memory, model folders,
saving paths and messages to the browser.

Everything else in the pack calls these functions. Outside a ComfyUI process (tests, scripts) each
has a plain fallback, so the nodes run and are tested without ComfyUI.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

try:  # inside ComfyUI
    import comfy.model_management as model_management
    import comfy.utils as comfy_utils
    import folder_paths
    from server import PromptServer
except ImportError:  # a test or a script: no ComfyUI
    model_management = comfy_utils = folder_paths = PromptServer = None

IN_COMFYUI = folder_paths is not None
PACK_MODELS = Path(__file__).resolve().parents[1] / "echodistill_core" / "assets" / "tiny"
_FALLBACK_ROOT = Path(os.environ.get("ECHODISTILL_HOME", Path.cwd() / "echodistill_output"))


class Interrupted(Exception):
    """Raised outside ComfyUI where ComfyUI would raise its own interruption."""


def interruption_types() -> tuple[type[BaseException], ...]:
    if model_management is not None:
        return (model_management.InterruptProcessingException, Interrupted, KeyboardInterrupt)
    return (Interrupted, KeyboardInterrupt)


def processing_interrupted() -> bool:
    """True once the user pressed Cancel in the browser."""
    return model_management is not None and model_management.processing_interrupted()


def throw_if_interrupted() -> None:
    if model_management is not None:
        model_management.throw_exception_if_processing_interrupted()


def torch_device() -> torch.device:
    if model_management is not None:
        return model_management.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def free_device_memory_for_training() -> None:
    """Unload ComfyUI's own models so training has the device to itself."""
    if model_management is not None:
        model_management.unload_all_models()
        model_management.soft_empty_cache()


def release_device_memory() -> None:
    if model_management is not None:
        model_management.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


class Progress:
    """ComfyUI's progress bar with previews; every update also raises if the user pressed Cancel."""

    def __init__(self, total: int, node_id: str | None = None):
        self.total = total
        self.bar = comfy_utils.ProgressBar(total, node_id=node_id) if comfy_utils is not None else None

    def update(self, step: int, preview=None) -> None:
        if self.bar is None:
            return
        if preview is not None:
            self.bar.update_absolute(step, self.total, ("JPEG", preview, 512))
        else:
            self.bar.update_absolute(step, self.total)


def send_to_browser(event: str, data: dict) -> None:
    """A websocket message to the browser (the live training view listens for these)."""
    if PromptServer is not None and getattr(PromptServer, "instance", None) is not None:
        PromptServer.instance.send_sync(event, data)


# Model folders.
def model_names(kind: str) -> list[str]:
    """Files (or folders, for "diffusers") in ComfyUI's model folder of `kind`."""
    if folder_paths is None:
        return []
    if kind == "diffusers":
        names = []
        for root in folder_paths.get_folder_paths("diffusers"):
            if os.path.isdir(root):
                names += sorted(name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name)))
        return names
    return list(folder_paths.get_filename_list(kind))


def model_path(kind: str, name: str) -> Path | None:
    if folder_paths is None:
        return None
    if kind == "diffusers":
        for root in folder_paths.get_folder_paths("diffusers"):
            if os.path.isdir(os.path.join(root, name)):
                return Path(root) / name
        return None
    path = folder_paths.get_full_path(kind, name)
    return Path(path) if path else None


def output_directory() -> Path:
    if folder_paths is not None:
        return Path(folder_paths.get_output_directory())
    return _FALLBACK_ROOT / "output"


def model_folder(kind: str) -> Path:
    """Where stock loaders look for `kind` ("loras", "embeddings"): the first configured folder."""
    if folder_paths is not None:
        return Path(folder_paths.get_folder_paths(kind)[0])
    return _FALLBACK_ROOT / "models" / kind


def refresh_model_list(kind: str) -> None:
    """Let a dropdown see a file written during this session."""
    if folder_paths is not None and hasattr(folder_paths, "filename_list_cache"):
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
    if folder_paths is not None:
        return Path(folder_paths.get_folder_paths(RESULTS_KIND)[0])
    return _FALLBACK_ROOT / "models" / RESULTS_KIND


def states_folder() -> Path:
    """Resumable training states, kept under the output folder."""
    return output_directory() / "echodistill_states"


if folder_paths is not None and RESULTS_KIND not in folder_paths.folder_names_and_paths:
    folder_paths.add_model_folder_path(RESULTS_KIND, os.path.join(folder_paths.models_dir, RESULTS_KIND))
