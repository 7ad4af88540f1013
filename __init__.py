"""EchoDistill for ComfyUI: the pack's entry point.

ComfyUI imports this folder as a package. Everything ComfyUI-facing lives in `nodes/`; the method
itself is in `echodistill_core/`, which never imports ComfyUI.
"""

WEB_DIRECTORY = "./web"

# pytest also imports this file, as a plain module, when it collects the repository; only a package
# import (ComfyUI's) can reach the nodes, and only that one should.
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
