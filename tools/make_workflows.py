"""Write the pack's shareable workflows (UI-format ComfyUI .json) into example_workflows/, the folder
ComfyUI's template browser lists (with `<name>.jpg` beside each as its card's picture).

Each graph is described once below as nodes and links; widget values follow each node's declared
inputs (the pack's own declarations as ComfyUI reads them, and a table for the stock nodes used), so the
files stay in step with the nodes. Every graph is laid out in columns without overlaps, its nodes in titled groups, with a
note that says what it does and what to change, and the models it needs (name, folder, download
address) for ComfyUI's missing-model dialog. Run, in the pack's environment (the graphs take the demo concept and shared values from the
core): COMFYUI_DIR=... COMFYUI_PYTHON=... .venv/bin/python tools/make_workflows.py
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


sys.path.insert(0, str(ROOT))
from echodistill_core import config as CONFIG  # noqa: E402 (the values the graphs share with the core)
from echodistill_core.lab import demo as DEMO  # noqa: E402 (the demo concept Demo Concept Images draws)
from echodistill_core import recipe as RECIPE  # noqa: E402 (Train's defaults, the command line's)

DEMO_SUBJECT = f"{DEMO.DEMO_TOKEN} {DEMO.DEMO_CLASS_WORD}"  # "<mine> circle"

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
    "MarkdownNote": ([], ["text"], []),  # a note in the frontend only: never part of the prompt
}
NOTES = {"MarkdownNote"}
SEED_INPUTS = {"seed"}  # the frontend adds a "control_after_generate" widget after these


# The pack's nodes are V3 nodes: only ComfyUI's Python, with ComfyUI's folder on its path, can import them. It
# prints how ComfyUI's /object_info describes each (PyPI's CUDA torchvision beside a CPU torch needs two of its
# modules stood in for, as tests/test_comfyui.py starts ComfyUI).
NODE_INFO = """
import asyncio, importlib.util, json, sys, types
for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
    sys.modules.setdefault(name, types.ModuleType(name))
root, comfyui = sys.argv[1:]
sys.path.insert(0, comfyui)
import comfy.cli_args
comfy.cli_args.args.cpu = True
spec = importlib.util.spec_from_file_location("echodistill_pack", root + "/__init__.py", submodule_search_locations=[root])
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
nodes = asyncio.run(asyncio.run(pack.comfy_entrypoint()).get_node_list())
print(json.dumps({node.GET_SCHEMA().node_id: node.GET_NODE_INFO_V1() for node in nodes}, default=str))
"""


@functools.cache
def pack_nodes() -> dict:
    """Each node of the pack as ComfyUI's /object_info describes it ({node id: info}), read by ComfyUI's Python
    (COMFYUI_PYTHON, default this one) from ComfyUI's folder (COMFYUI_DIR)."""
    comfyui = os.environ.get("COMFYUI_DIR")
    if not comfyui:
        raise SystemExit("the pack's nodes are ComfyUI V3 nodes: set COMFYUI_DIR to a ComfyUI checkout (and "
                         "COMFYUI_PYTHON to its Python) to read them")
    done = subprocess.run([os.environ.get("COMFYUI_PYTHON", sys.executable), "-c", NODE_INFO, str(ROOT), comfyui],
                          capture_output=True, text=True, cwd=comfyui, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"ComfyUI's Python could not read the pack's nodes:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def signature(node_type: str, pack: dict) -> tuple[list, list, list]:
    """(input sockets [(name, type)], widget names, output sockets [(name, type)]) of a node type."""
    if node_type in STOCK:
        return STOCK[node_type]
    info = pack[node_type]
    sockets, widgets = [], []
    for section in ("required", "optional"):
        for name, (kind, *_) in info["input"].get(section, {}).items():
            if isinstance(kind, list) or kind in ("COMBO", "INT", "FLOAT", "STRING", "BOOLEAN"):
                widgets.append(name)
                if name in SEED_INPUTS:
                    widgets.append("control_after_generate")
            else:
                sockets.append((name, kind))
    return sockets, widgets, list(zip(info["output_name"], info["output"]))


def workflow(nodes: list[dict], pack: dict, groups: list[tuple[str, list[int]]] = (),
             models: list[dict] = ()) -> dict:
    """nodes: {"id", "type", "pos", "size", "title", "widgets": {name: value}, "inputs": {socket: (node id,
    output index)}}; groups: (title, node ids) boxes drawn around those nodes; models: what the graph needs."""
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
        ui_node = {
            "id": node["id"], "type": node["type"], "pos": list(node["pos"]), "size": list(node["size"]),
            "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": [
                {"name": name, "type": kind, "slot_index": index, "links": []}
                for index, (name, kind) in enumerate(outputs)],
            "properties": {} if node["type"] in NOTES else {"Node name for S&R": node["type"]},
            "widgets_values": [node.get("widgets", {}).get(name) for name in widget_names],
        }
        if "title" in node:
            ui_node["title"] = node["title"]
        if node["type"] in NOTES:
            ui_node["color"], ui_node["bgcolor"] = "#432", "#653"  # the frontend's yellow, as for a new note
        ui_nodes.append(ui_node)
    for link_id, source, slot, _, _, _ in links:
        next(n for n in ui_nodes if n["id"] == source)["outputs"][slot]["links"].append(link_id)
    for node in ui_nodes:
        assert None not in node["widgets_values"], f"{node['type']}: give every widget a value"
    boxes = [{"id": index + 1, "title": title, "bounding": group_box([by_id[i] for i in members]),
              "color": GROUP_COLOUR, "font_size": 24, "flags": {}} for index, (title, members) in enumerate(groups)]
    graph = {"last_node_id": max(by_id), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
             "groups": boxes, "config": {}, "extra": {}, "version": 0.4}
    if models:
        graph["models"] = list(models)
    return graph


# Layout. A node's pos is the top left of its body; its title bar (30 px) sits above it. Sizes are at least
# what the frontend computes for the node's widgets (tests/browser/workflows.mjs checks it).
TITLE, GAP, GROUP_TITLE, GROUP_PAD, GROUP_COLOUR = 30, 50, 46, 15, "#3f789e"


def column(x: float, y: float, nodes: list[dict]) -> list[dict]:
    """`nodes` stacked from (x, y) with room for each title bar between them."""
    for node in nodes:
        node["pos"] = [x, y + TITLE]
        y += TITLE + node["size"][1] + GAP
    return nodes


def group_box(members: list[dict]) -> list[float]:
    left = min(n["pos"][0] for n in members) - GROUP_PAD
    top = min(n["pos"][1] for n in members) - TITLE - GROUP_TITLE
    right = max(n["pos"][0] + n["size"][0] for n in members) + GROUP_PAD
    bottom = max(n["pos"][1] + n["size"][1] for n in members) + GROUP_PAD
    return [left, top, right - left, bottom - top]


def bottom_of(nodes: list[dict]) -> float:
    return max(n["pos"][1] + n["size"][1] for n in nodes)


# Where each model comes from: shown by ComfyUI's missing-model dialog, which offers the download into the
# folder (only from huggingface.co or civitai.com, only .safetensors files).
MODELS = {
    "v2-1_768-ema-pruned.safetensors": ("checkpoints", "https://huggingface.co/stabilityai/stable-diffusion-2-1/"
                                        "resolve/main/v2-1_768-ema-pruned.safetensors"),
    "sd_turbo.safetensors": ("checkpoints", "https://huggingface.co/stabilityai/sd-turbo/resolve/main/"
                             "sd_turbo.safetensors"),
    "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors": ("clip_vision", "https://huggingface.co/h94/IP-Adapter/resolve/"
                                                    "main/models/image_encoder/model.safetensors"),
    "ip-adapter_sd15.safetensors": ("ipadapter", "https://huggingface.co/h94/IP-Adapter/resolve/main/models/"
                                    "ip-adapter_sd15.safetensors"),
    "dino-vits16.safetensors": ("dino", "https://huggingface.co/facebook/dino-vits16/resolve/refs%2Fpr%2F1/"
                                "model.safetensors"),
    "dinov2-large.safetensors": ("dino", "https://huggingface.co/facebook/dinov2-large/resolve/main/"
                                 "model.safetensors"),
}


def models(*names: str) -> list[dict]:
    return [{"name": name, "url": MODELS[name][1], "directory": MODELS[name][0]} for name in names]


def preset_values(preset: str) -> dict:
    """Train's preset with its steps and learning rates shown (as the browser shows them when the preset is
    chosen; 0, the node's default, would mean the same unseen)."""
    config = CONFIG.PRESETS[preset]
    return {"preset": preset, "steps": config.steps, "teacher_lr": config.teacher_lr, "student_lr": config.student_lr}


def note(node_id: int, text: str, size: list[int]) -> dict:
    return {"id": node_id, "type": "MarkdownNote", "title": "Read me", "size": size, "widgets": {"text": text}}


# Train's own defaults (steps and rates 0: the preset's); each graph shows its preset's values (preset_values).
TRAIN_DEFAULTS = {"steps": 0, "parameterisation": CONFIG.PARAMETERISATIONS[0], "memory": RECIPE.DEFAULT_MEMORY,
                  "echo": True, "seed": 42, "control_after_generate": "fixed", "preview_every": 25,
                  "preset": RECIPE.DEFAULT_PRESET, "teacher_lr": 0.0,
                  "student_lr": 0.0, "resume_state": "none (start fresh)", "resolution": 0, "save_every": 250,
                  "lora_rank": 4, "preview_prompts": ""}
SAMPLE = {"seed": 0, "control_after_generate": "fixed", "batch_size": 4, "upscale": 1}
PAPER_IMAGE_NETWORKS = {  # method.md's discriminators and feature network, from the files ComfyUI users have
    "id": 12, "type": "EchoDistillLoadImageNetworks", "size": [420, 220],
    "widgets": {"discriminators": "paper", "feature_network": "ip-adapter",
                "clip_vision": "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "ip_adapter": "ip-adapter_sd15.safetensors",
                "dino": "dino-vits16.safetensors", "dinov2": "dinov2-large.safetensors", "precision": "auto"}}


def personalize(teacher: str, student: str, images: dict, token: str, class_word: str, train: dict, prompt: str,
                save_name: str, readme: str, sample: dict, guidance: float, image_networks: dict | None = None,
                captions: str = "") -> tuple:
    """The personalization graph (nodes, groups): inputs on the left, Train in the middle, what to look at
    and keep on the right (the teacher sampled with `guidance`, its training's); `image_networks` (a Load
    Image Networks node) feeds Train when given; `captions` (one a line) caption the photos."""
    networks = {"image_networks": (image_networks["id"], 0)} if image_networks else {}
    readme_node = note(13, readme, [420, 400])
    readme_node["pos"] = [40, 40 + TITLE]
    inputs = column(40, 40 + TITLE + 400 + GAP + GROUP_TITLE, [
        {"id": 1, "type": "EchoDistillLoadTeacher", "size": [420, 110],
         "widgets": {"model": teacher, "family": "auto-detect", "precision": "auto"}},
        {"id": 2, "type": "EchoDistillLoadStudent", "size": [420, 110],
         "widgets": {"model": student, "family": "auto-detect", "precision": "auto"}},
        *([image_networks] if image_networks else []),
        images,
        {"id": 4, "type": "EchoDistillConceptImages", "size": [420, 240],
         "widgets": {"token": token, "class_word": class_word, "initializer_word": "", "captions": captions},
         "inputs": {"images": (3, 0)}},
    ])
    training = column(520, 40 + GROUP_TITLE, [
        {"id": 5, "type": "EchoDistillTrain", "size": [560, 1220], "widgets": {**TRAIN_DEFAULTS, **train},
         "inputs": {"teacher": (1, 0), "student": (2, 0), "concept": (4, 0), **networks}}])
    looking = column(1140, 40 + GROUP_TITLE, [
        {"id": 6, "type": "EchoDistillOneStepSample", "size": [380, 270],
         "widgets": {"prompt": prompt, **SAMPLE, **sample, "steps": 1}, "inputs": {"model": (5, 0)}},
        {"id": 8, "type": "EchoDistillTeacherSample", "size": [380, 300],
         "widgets": {"prompt": prompt, **SAMPLE, **sample, "steps": CONFIG.TEACHER_SAMPLE_STEPS, "cfg": guidance},
         "inputs": {"model": (5, 1)}},
        {"id": 11, "type": "EchoDistillSavePersonalized", "size": [380, 240], "widgets": {"name": save_name,
                                                                                        "overwrite": False},
         "inputs": {"model": (5, 0)}},
    ])
    shown = column(1580, 40 + GROUP_TITLE, [
        {"id": 7, "type": "PreviewImage", "title": "Student: one step", "size": [560, 330], "inputs": {"images": (6, 0)}},
        {"id": 9, "type": "PreviewImage", "title": f"Teacher: {CONFIG.TEACHER_SAMPLE_STEPS} steps", "size": [560, 330], "inputs": {"images": (8, 0)}},
        {"id": 10, "type": "PreviewImage", "title": "Training view (loss_plot)", "size": [560, 420],
         "inputs": {"images": (5, 2)}},
    ])
    nodes = [readme_node, *inputs, *training, *looking, *shown]
    groups = [("1 · Models and photos", [n["id"] for n in inputs]), ("2 · Train", [5]),
              ("3 · Look and keep", [n["id"] for n in looking + shown])]
    return sorted(nodes, key=lambda n: n["id"]), groups


TINY_README = """## Personalize the bundled tiny models

EchoDistill teaches a **one-step** model a new subject from a few photos by training it together with a
multi-step teacher. This workflow runs on a CPU in a few minutes: the bundled 32 px models learn my circle
(a red circle with a blue band across it: a kind they know, with a look of its own) as `{subject}`,
from five drawings captioned in the world's own words.

**Press Run.** The Train node draws the losses as it goes and shows the student's previews from step 1;
Cancel keeps a state you can resume (`resume_state`). The results land on the right: the student's and
the teacher's images, the training view, and Save Personalized lists the files it wrote.

**To change:**
- your own photos: replace *Demo Concept Images* with Load Image → *Concept Images*, and clear or
  rewrite its captions (one a line, each with the token);
- `token` and `class_word` in Concept Images, and the prompts (they must contain the token);
- `steps`, `preview_prompts` (one a line) and the learning rates on Train;
- `upscale` on the samplers enlarges the 32 px images for viewing."""

TURBO_README = """## Personalize SD-Turbo with an SD 2.1 teacher (the paper's setting)

Needs a GPU with 24 GB (memory preset `24 GB`) and these files, which ComfyUI offers to download
when the workflow opens:
- `models/checkpoints`: `v2-1_768-ema-pruned.safetensors` (teacher), `sd_turbo.safetensors` (student);
- `models/clip_vision`: `CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors`;
- `models/ipadapter`: `ip-adapter_sd15.safetensors`;
- `models/dino`: `dino-vits16.safetensors`, `dinov2-large.safetensors`.

**To change:** your photos in *Load Image* (3-20 of one subject; chain Concept Images nodes for more),
`token` / `class_word`, the prompts, and `memory` to your GPU (8, 12 or 24 GB). Without the image
networks, delete *Load Image Networks*: Train then uses the teacher's own features. Press Run: 1000
steps take about an hour on a 24 GB GPU. Save Personalized writes a LoRA and an embedding for stock
ComfyUI (workflow 3)."""

STOCK_README = """## Use a saved result with stock ComfyUI nodes

Save Personalized wrote a LoRA (`models/loras`) and an embedding (`models/embeddings`) under the
name you gave it (`my_dog` here). With them, stock nodes draw your subject in **one step**:
- *Load Checkpoint*: `sd_turbo.safetensors` (the student's base model);
- *Load LoRA*: your LoRA;
- the prompt says `embedding:my_dog dog` where the subject goes;
- KSampler: 1 step, CFG 1, euler_ancestral.

**To change:** the LoRA's name, the embedding's name in the prompt, and the rest of the prompt."""


STOCK_IN_OUT_README = """## One checkpoint load, in and out: Train between stock nodes

The teacher and the student come from *Load Checkpoint* nodes you may already have in a graph
(a LoRA applied to them is trained on as part of them), and the personalized student goes back out
as a stock `MODEL`: *EchoDistill Personalized Model* patches its learned layers in, *EchoDistill
Encode Prompt* turns a prompt with the token into `CONDITIONING`, and stock KSampler draws your
subject in **one step** (euler, sgm_uniform, CFG 1), the same image EchoDistill One-Step Sample draws.
Nothing is saved on the way; connect Save Personalized to Train to keep files.

**To change:** your photos in *Load Image*, `token` / `class_word`, the prompt in Encode Prompt, and
`memory` on Train to your GPU (8, 12 or 24 GB)."""


def stock_in_out_graph() -> tuple:
    readme = note(15, STOCK_IN_OUT_README, [420, 400])
    readme["pos"] = [40, 40 + TITLE]
    inputs = column(40, 40 + TITLE + 400 + GAP + GROUP_TITLE, [
        {"id": 1, "type": "CheckpointLoaderSimple", "title": "Load Checkpoint: the teacher", "size": [420, 100],
         "widgets": {"ckpt_name": "v2-1_768-ema-pruned.safetensors"}},
        {"id": 2, "type": "CheckpointLoaderSimple", "title": "Load Checkpoint: the student", "size": [420, 100],
         "widgets": {"ckpt_name": "sd_turbo.safetensors"}},
        {"id": 3, "type": "EchoDistillTeacherFromCheckpoint", "size": [420, 170],
         "inputs": {"model": (1, 0), "clip": (1, 1), "vae": (1, 2)}, "widgets": {"family": "auto-detect",
                                                                                 "precision": "auto"}},
        {"id": 4, "type": "EchoDistillStudentFromCheckpoint", "size": [420, 170],
         "inputs": {"model": (2, 0), "clip": (2, 1), "vae": (2, 2)}, "widgets": {"family": "auto-detect",
                                                                                 "precision": "auto"}},
        {"id": 5, "type": "LoadImage", "size": [420, 340], "widgets": {"image": "my_dog.png", "upload": "image"}},
        {"id": 6, "type": "EchoDistillConceptImages", "size": [420, 240],
         "widgets": {"token": "<my-dog>", "class_word": "dog", "initializer_word": "", "captions": ""},
         "inputs": {"images": (5, 0)}},
    ])
    training = column(520, 40 + GROUP_TITLE, [
        {"id": 7, "type": "EchoDistillTrain", "size": [560, 1220], "inputs": {"teacher": (3, 0), "student": (4, 0),
                                                                              "concept": (6, 0)},
         "widgets": {**TRAIN_DEFAULTS, **preset_values("paper"), "preview_every": 50, "preview_prompts": "a photo of a <my-dog> dog"}}])
    stock = column(1140, 40 + GROUP_TITLE, [
        {"id": 8, "type": "EchoDistillPersonalizedModel", "size": [380, 130],
         "inputs": {"one_step_model": (7, 0), "model": (2, 0)}, "widgets": {"strength": 1.0}},
        {"id": 9, "type": "EchoDistillEncodePrompt", "size": [380, 170], "inputs": {"one_step_model": (7, 0)},
         "widgets": {"text": "a photo of a <my-dog> dog on the beach"}},
        {"id": 10, "type": "CLIPTextEncode", "title": "Negative prompt (unused at CFG 1)", "size": [380, 120],
         "inputs": {"clip": (2, 1)}, "widgets": {"text": ""}},
        {"id": 11, "type": "EmptyLatentImage", "size": [380, 110], "widgets": {"width": 512, "height": 512,
                                                                              "batch_size": 1}},
    ])
    drawing = column(1580, 40 + GROUP_TITLE, [
        *one_step(12, {"model": (8, 0), "positive": (9, 0), "negative": (10, 0), "latent_image": (11, 0)},
                  vae=(2, 2), sampler="euler"),
        saved_image(14, 13)])
    groups = [("1 · Stock checkpoints and photos", [n["id"] for n in inputs]), ("2 · Train", [7]),
              ("3 · Back to stock nodes", [8, 9, 10, 11]), ("4 · One step", [12, 13, 14])]
    nodes = [readme, *inputs, *training, *stock, *drawing]
    return sorted(nodes, key=lambda n: n["id"]), groups, models("v2-1_768-ema-pruned.safetensors",
                                                                "sd_turbo.safetensors")


def main(folder: Path = ROOT / "example_workflows") -> None:
    pack = pack_nodes()
    graphs = {
        "1_personalize_tiny_models.json": (*personalize(
            "tiny teacher (bundled)", "tiny one-step student (bundled)",
            {"id": 3, "type": "EchoDistillDemoConceptImages", "size": [420, 60], "widgets": {"size": 32}},
            DEMO.DEMO_TOKEN, DEMO.DEMO_CLASS_WORD, {"memory": "unlimited", **preset_values("tiny"),
                                                     "preview_prompts": "\n".join(prompt.format(DEMO_SUBJECT)
                                                                                  for prompt in DEMO.DEMO_PROMPTS[:3])},
            DEMO.DEMO_PROMPTS[1].format(DEMO_SUBJECT), "tiny_my_circle", TINY_README.format(subject=DEMO_SUBJECT),
            {"upscale": 8},
            CONFIG.PRESETS["tiny"].guidance_scale, captions="\n".join(DEMO.demo_captions())), []),
        "2_personalize_sd_turbo_with_sd21_teacher.json": (*personalize(
            "checkpoints/v2-1_768-ema-pruned.safetensors", "checkpoints/sd_turbo.safetensors",
            {"id": 3, "type": "LoadImage", "size": [420, 340], "widgets": {"image": "my_dog.png", "upload": "image"}},
            "<my-dog>", "dog", {**preset_values("paper"), "preview_every": 50, "memory": "24 GB", "preview_prompts":
                                "a photo of a <my-dog> dog\na <my-dog> dog on the beach"},
            "a photo of a <my-dog> dog on the beach", "my_dog", TURBO_README, {"batch_size": 2},
            CONFIG.PRESETS["paper"].guidance_scale, PAPER_IMAGE_NETWORKS),
            models(*MODELS)),
        "3_use_saved_result_with_stock_nodes.json": stock_graph(),
        "4_stock_checkpoints_in_and_out.json": stock_in_out_graph(),
    }
    folder.mkdir(exist_ok=True)
    for name, (nodes, groups, needed) in graphs.items():
        (folder / name).write_text(json.dumps(workflow(nodes, pack, groups, needed), indent=1) + "\n")
        print(folder / name)


def one_step(first_id: int, sockets: dict, vae: tuple, sampler: str) -> list[dict]:
    """Stock KSampler at SD-Turbo's one step (CFG 1) and VAE Decode: nodes `first_id` and the next."""
    return [
        {"id": first_id, "type": "KSampler", "title": "KSampler (one step)", "size": [340, 270], "inputs": sockets,
         "widgets": {"seed": 0, "control_after_generate": "fixed", "steps": 1, "cfg": 1.0, "sampler_name": sampler,
                     "scheduler": "sgm_uniform", "denoise": 1.0}},
        {"id": first_id + 1, "type": "VAEDecode", "size": [340, 50], "inputs": {"samples": (first_id, 0), "vae": vae}},
    ]


def saved_image(node_id: int, image_node: int) -> dict:
    return {"id": node_id, "type": "SaveImage", "title": "Save Image: your subject", "size": [540, 580],
            "inputs": {"images": (image_node, 0)}, "widgets": {"filename_prefix": "echodistill"}}


def stock_graph() -> tuple:
    readme = note(9, STOCK_README, [400, 330])
    readme["pos"] = [40, 40 + TITLE]
    loading = column(40, 40 + TITLE + 330 + GAP + GROUP_TITLE, [
        {"id": 1, "type": "CheckpointLoaderSimple", "size": [400, 100], "widgets": {"ckpt_name": "sd_turbo.safetensors"}},
        {"id": 2, "type": "LoraLoader", "size": [400, 130], "inputs": {"model": (1, 0), "clip": (1, 1)},
         "widgets": {"lora_name": "my_dog.safetensors", "strength_model": 1.0, "strength_clip": 1.0}},
    ])
    prompts = column(490, 40 + GROUP_TITLE, [
        {"id": 3, "type": "CLIPTextEncode", "title": "Prompt (with the embedding)", "size": [400, 160],
         "inputs": {"clip": (2, 1)}, "widgets": {"text": "a photo of a embedding:my_dog dog on the beach"}},
        {"id": 4, "type": "CLIPTextEncode", "title": "Negative prompt (unused at CFG 1)", "size": [400, 120],
         "inputs": {"clip": (2, 1)}, "widgets": {"text": ""}},
        {"id": 5, "type": "EmptyLatentImage", "size": [400, 110], "widgets": {"width": 512, "height": 512,
                                                                             "batch_size": 1}},
    ])
    drawing = column(940, 40 + GROUP_TITLE, one_step(6, {"model": (2, 0), "positive": (3, 0), "negative": (4, 0),
                                                          "latent_image": (5, 0)}, vae=(1, 2), sampler="euler_ancestral"))
    saving = column(1330, 40 + GROUP_TITLE, [saved_image(8, 7)])
    groups = [("1 · The base model and your LoRA", [1, 2]), ("2 · Prompt", [3, 4, 5]), ("3 · One step", [6, 7, 8])]
    return sorted([readme, *loading, *prompts, *drawing, *saving], key=lambda n: n["id"]), groups, models(
        "sd_turbo.safetensors")


def thumbnails(screenshots: Path, folder: Path = ROOT / "example_workflows", size: int = 512) -> None:
    """Each workflow's card picture for the template browser (`<name>.jpg` beside it), from the browser
    test's screenshots (ECHODISTILL_SCREENSHOTS=<folder> pytest tests/test_browser.py): workflow 1's
    training view after its run, the others' graphs as loaded; on the canvas's colour, square."""
    from PIL import Image, ImageChops

    for workflow in sorted(folder.glob("*.json")):
        name = workflow.stem
        shot = screenshots / ("1_training_view_after_run.png" if name.startswith("1_") else f"{name}_loaded.png")
        image = Image.open(shot).convert("RGB")
        if not name.startswith("1_"):  # the graph without the empty canvas and the window's bars around it
            image = image.crop((70, 80, image.width - 10, image.height - 10))
            background = Image.new("RGB", image.size, image.getpixel((5, 5)))
            image = image.crop(ImageChops.difference(image, background).point(lambda v: 255 if v > 24 else 0).getbbox())
        side = max(image.size)
        square = Image.new("RGB", (side, side), image.getpixel((0, 0)) if name.startswith("1_") else (32, 32, 32))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        square.resize((size, size), Image.LANCZOS).save(folder / f"{name}.jpg", quality=88)
        print(folder / f"{name}.jpg")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--thumbnails"]:
        thumbnails(Path(sys.argv[2]))
    else:
        main()
