"""EchoDistill for ComfyUI: the pack's entry point.

ComfyUI imports this folder as a package. Everything ComfyUI-facing lives in `nodes/`; the method
itself is in `echodistill_core/`, which never imports ComfyUI.
"""

import importlib.util

WEB_DIRECTORY = "./web"

# The nodes are ComfyUI V3 nodes: only where ComfyUI's comfy_api is (ComfyUI's import of this folder as a package)
# do they load. pytest also imports this file when it collects the repository, as a plain module or a package.
if __package__ and importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
