"""What ComfyUI's model manager holds while EchoDistill trains, in a real ComfyUI server.

A ComfyUI (COMFYUI_DIR, run by COMFYUI_PYTHON) starts headless (--cpu: this measures ComfyUI's accounting,
not a GPU) with the pack and a probe (tests/comfyui_memory_probe) that records every load_models_gpu call
with the models loaded before and after it, each with its accounted size (`loaded_size()`). Then, in one
server:

1. workflow 1 (the bundled tiny models: Train, One-Step Sample, Teacher Sample, Save) alone: the accounted
   peak of its loads, and which of the pack's networks ComfyUI loaded;
2. every model unloaded (`unload_all_models`): what of the pack's is still accounted;
3. a stock generation: Load Checkpoint (a small SD 1.x file, tests/ldm_layout.py: ComfyUI's SD 1.x text
   encoder and VAE at full size, a one-level UNet), CLIP Text Encode, KSampler (1 step), VAE Decode: what
   ComfyUI holds after it;
4. the same workflow again (another seed, so it runs): its accounted peak, and what was still loaded when
   training loaded the pack's networks;
5. every model unloaded again.

"Accounted" is the sum of `loaded_size()` over `current_loaded_models`, as after each load; MB are 2^20
bytes. Prints the figures, then one JSON line.

    COMFYUI_DIR=... COMFYUI_PYTHON=... python bench/comfyui_memory.py [--steps 4] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tools"))
PROBE = ROOT / "tests" / "comfyui_memory_probe"
MB = 2**20


def stock_generation(checkpoint: str, seed: int) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red square on teal"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": seed,
            "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


def run(server, prompt: dict, what: str) -> dict:
    """Queue `prompt` with the probe's record cleared; the loads it made and what is loaded after it."""
    server.post("/echodistill_probe/reset", {})
    entry = server.wait(server.queue(prompt), cpu_budget=1800)
    if entry["status"]["status_str"] != "success":
        raise RuntimeError(f"{what} failed: {json.dumps(entry['status'])[-2000:]}")
    return server.get("/echodistill_probe/memory")


def peak(record: dict) -> int:
    """The largest accounted total after any load of the run (0 if it loaded nothing through ComfyUI)."""
    return max([call["after"]["loaded_total"] for call in record["calls"]], default=0)


def pack_labels(record: dict) -> list[str]:
    return sorted({model["label"] for call in record["calls"] for model in call["after"]["models"] if model["pack"]})


def training_load(record: dict) -> dict | None:
    """The first load that brought the pack's networks in for training (the teacher's UNet among them)."""
    return next((call for call in record["calls"] if "teacher unet" in call["requested"]), None)


def others(summary: dict) -> list[str]:
    return [model["label"] for model in summary["models"] if not model["pack"]]


def measure(root: Path, steps: int) -> dict:
    from ldm_layout import write_small_sd1_checkpoint
    from test_comfyui import Server, tiny_workflow

    checkpoints = root / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    write_small_sd1_checkpoint(checkpoints / "small_sd1.safetensors")
    server = Server(root, other_packs=(PROBE,))
    try:
        alone = run(server, tiny_workflow(steps=steps, name="alone"), "the workflow alone")
        evicted_alone = server.post("/echodistill_probe/unload", {})
        stock = run(server, stock_generation("small_sd1.safetensors", 0), "the stock generation")
        again = tiny_workflow(steps=steps, name="after_stock")
        again["5"]["inputs"]["seed"] += 1
        after_stock = run(server, again, "the workflow after the stock generation")
        evicted = server.post("/echodistill_probe/unload", {})
    finally:
        server.stop()
    load = training_load(after_stock)
    return {
        "peak_alone_mb": peak(alone) / MB,
        "peak_after_stock_mb": peak(after_stock) / MB,
        "stock_loaded_after_generation_mb": stock["loaded_total"] / MB,
        "stock_models": others(stock),
        "pack_models_loaded": pack_labels(alone),
        "pack_models_loaded_after_stock": pack_labels(after_stock),
        "pack_loaded_after_run_mb": sum(m["loaded"] for m in after_stock["models"] if m["pack"]) / MB,
        "loaded_when_training_loaded": None if load is None else others(load["before"]) + others(load["after"]),
        "loaded_after_unload_alone_mb": evicted_alone["loaded_total"] / MB,
        "loaded_after_unload_mb": evicted["loaded_total"] / MB,
        "pack_models_after_unload": [m["label"] for m in evicted["models"] if m["pack"]],
        "loads_alone": len(alone["calls"]),
        "loads_after_stock": len(after_stock["calls"]),
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="training steps of each workflow run")
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it, server log included")
    args = parser.parse_args()
    if not os.environ.get("COMFYUI_DIR"):
        sys.exit("set COMFYUI_DIR (and COMFYUI_PYTHON) to a ComfyUI checkout and its interpreter")
    root = args.keep or Path(tempfile.mkdtemp(prefix="echodistill-comfyui-memory-"))
    try:
        figures = measure(root, args.steps)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"ComfyUI's accounted memory (loaded_size of current_loaded_models), workflow 1 with {args.steps} "
          "training steps:")
    print(f"  alone:                         peak {figures['peak_alone_mb']:.1f} MB, the pack's networks loaded: "
          f"{', '.join(figures['pack_models_loaded'])}")
    print(f"  a stock generation leaves:     {figures['stock_loaded_after_generation_mb']:.1f} MB "
          f"({', '.join(figures['stock_models'])})")
    print(f"  after the stock generation:    peak {figures['peak_after_stock_mb']:.1f} MB; other models loaded when "
          f"training loaded its own: {figures['loaded_when_training_loaded'] or 'none'}")
    print(f"  the pack's, after the run:     {figures['pack_loaded_after_run_mb']:.1f} MB; after unload_all_models: "
          f"{figures['loaded_after_unload_mb']:.1f} MB in all, the pack's left: "
          f"{figures['pack_models_after_unload'] or 'none'}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
