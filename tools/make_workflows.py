"""Write the pack's shareable workflows (UI-format ComfyUI .json) into workflows/.

Each graph is described once below as nodes and links; widget values follow each node's declared
inputs (the pack's own INPUT_TYPES, and a table for the stock nodes used), so the files stay in step
with the nodes. Run: python tools/make_workflows.py
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Stock ComfyUI nodes used by the workflows: (input sockets, widget names, output sockets).
STOCK = {
    "LoadImage": ([], ["image", "upload"], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "PreviewImage": ([("images", "IMAGE")], [], []),
    "SaveImage": ([("images", "IMAGE")], ["filename_prefix"], []),
    "CheckpointLoaderSimple": ([], ["ckpt_name"], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "LoraLoader": ([("model", "MODEL"), ("clip", "CLIP")], ["lora_name", "strength_model", "strength_clip"],
                   [("MODEL", "MODEL"), ("CLIP", "CLIP")]),
    "CLIPTextEncode": ([("clip", "CLIP")], ["text"], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": ([], ["width", "height", "batch_size"], [("LATENT", "LATENT")]),
    "KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT")],
                 ["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
                 [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [], [("IMAGE", "IMAGE")]),
}
SEED_INPUTS = {"seed"}  # the frontend adds a "control_after_generate" widget after these


def pack_nodes() -> dict:
    spec = importlib.util.spec_from_file_location("echodistill_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.NODE_CLASS_MAPPINGS


def signature(node_type: str, pack: dict) -> tuple[list, list, list]:
    """(input sockets [(name, type)], widget names, output sockets [(name, type)]) of a node type."""
    if node_type in STOCK:
        return STOCK[node_type]
    node = pack[node_type]
    declared = node.INPUT_TYPES()
    sockets, widgets = [], []
    for section in ("required", "optional"):
        for name, (kind, *_) in declared.get(section, {}).items():
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                widgets.append(name)
                if name in SEED_INPUTS:
                    widgets.append("control_after_generate")
            else:
                sockets.append((name, kind))
    names = getattr(node, "RETURN_NAMES", node.RETURN_TYPES)
    return sockets, widgets, list(zip(names, node.RETURN_TYPES))


def workflow(nodes: list[dict], pack: dict) -> dict:
    """nodes: {"id", "type", "pos", "widgets": {name: value}, "inputs": {socket: (node id, output index)}}."""
    by_id = {node["id"]: node for node in nodes}
    links, ui_nodes = [], []
    for order, node in enumerate(nodes):
        sockets, widget_names, outputs = signature(node["type"], pack)
        missing = set(node.get("widgets", {})) - set(widget_names)
        assert not missing, f"{node['type']} has no widgets {missing}"
        inputs = []
        for name, kind in sockets:
            link = None
            if name in node.get("inputs", {}):
                source, slot = node["inputs"][name]
                link = len(links) + 1
                links.append([link, source, slot, node["id"], len(inputs), kind])
            inputs.append({"name": name, "type": kind, "link": link})
        ui_nodes.append({
            "id": node["id"], "type": node["type"], "pos": list(node["pos"]), "size": node.get("size", [320, 160]),
            "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": [
                {"name": name, "type": kind, "slot_index": index, "links": []}
                for index, (name, kind) in enumerate(outputs)],
            "properties": {"Node name for S&R": node["type"]},
            "widgets_values": [node.get("widgets", {}).get(name, node.get("defaults", {}).get(name))
                               for name in widget_names],
        })
    for link_id, source, slot, _, _, _ in links:
        next(n for n in ui_nodes if n["id"] == source)["outputs"][slot]["links"].append(link_id)
    for node in ui_nodes:
        assert None not in node["widgets_values"], f"{node['type']}: give every widget a value"
    return {"last_node_id": max(by_id), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


TRAIN_DEFAULTS = {"steps": 300, "parameterisation": "custom_diffusion", "memory": "12 GB", "echo": True, "seed": 42,
                  "control_after_generate": "fixed", "preview_every": 25, "preset": "auto", "teacher_lr": 0.0,
                  "student_lr": 0.0, "resume_state": "none (start fresh)", "resolution": 0, "save_every": 250}
SAMPLE = {"seed": 0, "control_after_generate": "fixed", "batch_size": 4}
PAPER_IMAGE_NETWORKS = {  # method.md's discriminators and feature network, from the files ComfyUI users have
    "id": 12, "type": "EchoDistillLoadImageNetworks", "pos": [400, 40], "size": [400, 230],
    "widgets": {"discriminators": "paper", "feature_network": "ip-adapter",
                "clip_vision": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "ip_adapter": "ip-adapter_sd15.safetensors",
                "dino": "dino-vits16", "dinov2": "dinov2-large", "precision": "auto"}}


def personalize(teacher: str, student: str, images: dict, token: str, class_word: str, train: dict,
                prompt: str, save_name: str, image_networks: dict | None = None) -> list[dict]:
    """The personalization graph; `image_networks` (a Load Image Networks node) feeds Train when given."""
    networks = {"image_networks": (image_networks["id"], 0)} if image_networks else {}
    return [*([image_networks] if image_networks else []),
        {"id": 1, "type": "EchoDistillLoadTeacher", "pos": [40, 40],
         "widgets": {"model": teacher, "family": "auto-detect", "precision": "auto"}},
        {"id": 2, "type": "EchoDistillLoadStudent", "pos": [40, 260],
         "widgets": {"model": student, "family": "auto-detect", "precision": "auto"}},
        images,
        {"id": 4, "type": "EchoDistillConceptImages", "pos": [400, 440], "size": [320, 260],
         "widgets": {"token": token, "class_word": class_word, "initializer_word": "", "captions": ""},
         "inputs": {"images": (3, 0)}},
        {"id": 5, "type": "EchoDistillTrain", "pos": [840, 40], "size": [380, 830],
         "widgets": {**TRAIN_DEFAULTS, **train},
         "inputs": {"teacher": (1, 0), "student": (2, 0), "concept": (4, 0), **networks}},
        {"id": 6, "type": "EchoDistillOneStepSample", "pos": [1260, 40], "size": [340, 240],
         "widgets": {"prompt": prompt, **SAMPLE, "steps": 1}, "inputs": {"model": (5, 0)}},
        {"id": 7, "type": "PreviewImage", "pos": [1640, 40], "inputs": {"images": (6, 0)}},
        {"id": 8, "type": "EchoDistillTeacherSample", "pos": [1260, 360], "size": [340, 260],
         "widgets": {"prompt": prompt, **SAMPLE, "steps": 25, "cfg": 7.5}, "inputs": {"model": (5, 1)}},
        {"id": 9, "type": "PreviewImage", "pos": [1640, 360], "inputs": {"images": (8, 0)}},
        {"id": 10, "type": "PreviewImage", "pos": [1260, 700], "inputs": {"images": (5, 2)}},
        {"id": 11, "type": "EchoDistillSavePersonalized", "pos": [840, 920], "widgets": {"name": save_name},
         "inputs": {"model": (5, 0)}},
    ]


def main(folder: Path = ROOT / "workflows") -> None:
    pack = pack_nodes()
    graphs = {
        "1_personalize_tiny_models.json": personalize(
            "tiny teacher (bundled)", "tiny one-step student (bundled)",
            {"id": 3, "type": "EchoDistillDemoConceptImages", "pos": [40, 480], "widgets": {"size": 32}},
            "<heart>", "toy", {"steps": 300}, "a small <heart> toy on teal", "tiny_heart"),
        "2_personalize_sd_turbo_with_sd21_teacher.json": personalize(
            "checkpoints/v2-1_768-ema-pruned.safetensors", "checkpoints/sd_turbo.safetensors",
            {"id": 3, "type": "LoadImage", "pos": [40, 480], "widgets": {"image": "my_dog.png", "upload": "image"}},
            "<my-dog>", "dog", {"steps": 1000, "preset": "paper", "preview_every": 50, "memory": "24 GB"},
            "a photo of a <my-dog> dog on the beach", "my_dog", PAPER_IMAGE_NETWORKS),
        "3_use_saved_result_with_stock_nodes.json": [
            {"id": 1, "type": "CheckpointLoaderSimple", "pos": [40, 40], "widgets": {"ckpt_name": "sd_turbo.safetensors"}},
            {"id": 2, "type": "LoraLoader", "pos": [400, 40], "inputs": {"model": (1, 0), "clip": (1, 1)},
             "widgets": {"lora_name": "my_dog.safetensors", "strength_model": 1.0, "strength_clip": 1.0}},
            {"id": 3, "type": "CLIPTextEncode", "pos": [760, 40], "inputs": {"clip": (2, 1)},
             "widgets": {"text": "a photo of a embedding:my_dog dog on the beach"}},
            {"id": 4, "type": "CLIPTextEncode", "pos": [760, 260], "inputs": {"clip": (2, 1)}, "widgets": {"text": ""}},
            {"id": 5, "type": "EmptyLatentImage", "pos": [760, 480], "widgets": {"width": 512, "height": 512,
                                                                                 "batch_size": 1}},
            {"id": 6, "type": "KSampler", "pos": [1120, 40], "size": [320, 280],
             "inputs": {"model": (2, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (5, 0)},
             "widgets": {"seed": 0, "control_after_generate": "fixed", "steps": 1, "cfg": 1.0,
                         "sampler_name": "euler_ancestral", "scheduler": "sgm_uniform", "denoise": 1.0}},
            {"id": 7, "type": "VAEDecode", "pos": [1480, 40], "inputs": {"samples": (6, 0), "vae": (1, 2)}},
            {"id": 8, "type": "SaveImage", "pos": [1840, 40], "widgets": {"filename_prefix": "echodistill"}},
        ],
    }
    graphs["3_use_saved_result_with_stock_nodes.json"][-1]["inputs"] = {"images": (7, 0)}
    for name, nodes in graphs.items():
        (folder / name).write_text(json.dumps(workflow(nodes, pack), indent=1) + "\n")
        print(folder / name)


if __name__ == "__main__":
    main()
