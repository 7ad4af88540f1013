"""EchoDistill for ComfyUI: the pack's entry point.

ComfyUI imports this folder as a package. Everything ComfyUI-facing lives in `nodes/`; the method
itself is in `echodistill_core/`, which never imports ComfyUI.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
