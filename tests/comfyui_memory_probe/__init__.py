"""A ComfyUI custom node folder (no nodes) for the memory benchmark and test: it records what ComfyUI's model
manager accounts and lets a client evict every model.

Every call of `model_management.load_models_gpu` (the only way a model enters `current_loaded_models`) is
recorded with the models loaded before and after it: each model's label (the pack's parts carry one, e.g.
"teacher unet"; ComfyUI's own are named by class), its accounted size (`loaded_size()`) and its full size
(`model_memory()`). Routes on the server:
  GET  /echodistill_probe/memory   the models loaded now, their total, and the calls recorded since the last reset
  POST /echodistill_probe/reset    forget the recorded calls
  POST /echodistill_probe/unload   model_management.unload_all_models(), then what is still loaded
"""

import threading

import comfy.model_management as model_management
from aiohttp import web
from server import PromptServer

NODE_CLASS_MAPPINGS = {}
_calls = []
_lock = threading.Lock()


def loaded() -> list[dict]:
    models = []
    for entry in list(model_management.current_loaded_models):
        patcher = entry.model
        if patcher is None:
            continue
        network = patcher.model
        models.append({"label": getattr(network, "label", type(network).__name__), "loaded": patcher.loaded_size(),
                       "size": entry.model_memory(), "pack": hasattr(network, "label")})
    return models


def summary(models: list[dict]) -> dict:
    return {"models": models, "loaded_total": sum(model["loaded"] for model in models)}


_original_load = model_management.load_models_gpu


def recording_load(models, *args, **kwargs):
    before = loaded()
    try:
        return _original_load(models, *args, **kwargs)
    finally:
        requested = [getattr(getattr(model, "model", None), "label", type(getattr(model, "model", model)).__name__)
                     for model in models]
        with _lock:
            _calls.append({"requested": requested, "before": summary(before), "after": summary(loaded())})


model_management.load_models_gpu = recording_load
routes = PromptServer.instance.routes


@routes.get("/echodistill_probe/memory")
async def memory(request):
    with _lock:
        calls = list(_calls)
    return web.json_response({**summary(loaded()), "calls": calls})


@routes.post("/echodistill_probe/reset")
async def reset(request):
    with _lock:
        _calls.clear()
    return web.json_response({})


@routes.post("/echodistill_probe/unload")
async def unload(request):
    model_management.unload_all_models()
    return web.json_response(summary(loaded()))
