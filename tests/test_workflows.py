"""The shareable workflows reference only nodes and inputs that exist, are what the generator writes (so
they stay in step with the nodes' declarations), and explain themselves: laid out without overlaps, in
groups, with a note, titled outputs and the models they need."""

import functools
import importlib.util
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The pack's nodes are V3 nodes, read by ComfyUI's Python (tools/make_workflows.py, pack_nodes).
needs_comfyui = pytest.mark.skipif(not os.environ.get("COMFYUI_DIR"), reason="set COMFYUI_DIR (and COMFYUI_PYTHON) "
                                   "to read the pack's V3 nodes")
FOLDER = ROOT / "example_workflows"
WORKFLOWS = sorted(FOLDER.glob("*.json"))
# Choices listed from ComfyUI's folders, empty outside it: the user's files, not the pack's to offer.
FOLDER_LISTINGS = {"model", "resume_state", "clip_vision", "ip_adapter", "dino", "dinov2"}


@functools.cache
def generator():
    spec = importlib.util.spec_from_file_location("make_workflows", ROOT / "tools" / "make_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_four_workflows_in_one_real_folder_the_template_browser_lists_once():
    assert len(WORKFLOWS) == 4
    assert FOLDER.is_dir() and not FOLDER.is_symlink()  # a symlink packs as an empty folder, and breaks on Windows
    for other in ("example", "examples", "workflow", "workflows"):  # ComfyUI lists these folders too
        assert not (ROOT / other).exists(), f"{other}/ would list the workflows twice"


@needs_comfyui
@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_nodes_inputs_and_links_exist(path):
    make = generator()
    pack = make.pack_nodes()
    graph = json.loads(path.read_text())
    nodes = {node["id"]: node for node in graph["nodes"]}
    for node in graph["nodes"]:
        assert node["type"] in pack or node["type"] in make.STOCK, f"unknown node {node['type']}"
        sockets, widgets, outputs = make.signature(node["type"], pack)
        assert [i["name"] for i in node["inputs"]] == [name for name, _ in sockets]
        assert len(node["widgets_values"]) == len(widgets)
        if node["type"] in pack:
            declared = pack[node["type"]]["input"]
            choices = {name: options["options"] for section in ("required", "optional")
                       for name, (kind, options) in declared.get(section, {}).items() if kind == "COMBO"}
            for name, value in zip(widgets, node["widgets_values"]):
                if name in choices and name not in FOLDER_LISTINGS:
                    assert value in choices[name], f"{node['type']}.{name} = {value!r}"
    for link_id, source, slot, target, target_slot, kind in graph["links"]:
        assert nodes[source]["outputs"][slot]["type"] == kind == nodes[target]["inputs"][target_slot]["type"]
        assert link_id in nodes[source]["outputs"][slot]["links"]
        assert nodes[target]["inputs"][target_slot]["link"] == link_id


@needs_comfyui
def test_workflow_files_are_what_the_generator_writes(tmp_path):
    generator().main(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in WORKFLOWS]
    for path in WORKFLOWS:
        assert (tmp_path / path.name).read_text() == path.read_text(), f"run tools/make_workflows.py ({path.name})"


@needs_comfyui
def test_the_workflows_use_every_node_but_load_personalized():
    used = {node["type"] for path in WORKFLOWS for node in json.loads(path.read_text())["nodes"]}
    # Paper Metrics scores a finished result against the paper's networks: not in the example workflows yet
    assert used >= set(generator().pack_nodes()) - {"EchoDistillLoadPersonalized", "EchoDistillPaperMetrics"}


def boxes(graph: dict) -> dict[int, tuple[float, float, float, float]]:
    """Each node's box with its title bar: (left, top, right, bottom)."""
    title = generator().TITLE
    return {n["id"]: (n["pos"][0], n["pos"][1] - title, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
            for n in graph["nodes"]}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_are_laid_out_in_groups_without_overlaps(path):
    graph = json.loads(path.read_text())
    box = boxes(graph)
    for a in box:
        for b in box:
            if a < b:
                (l1, t1, r1, b1), (l2, t2, r2, b2) = box[a], box[b]
                assert r1 <= l2 or r2 <= l1 or b1 <= t2 or b2 <= t1, f"nodes {a} and {b} overlap"
    grouped = set()
    for group in graph["groups"]:
        left, top, width, height = group["bounding"]
        inside = {i for i, (l, t, r, b) in box.items() if left <= l and r <= left + width and top <= t and b <= top + height}
        assert inside and not inside & grouped, group["title"]
        grouped |= inside
    notes = [n for n in graph["nodes"] if n["type"] == "MarkdownNote"]
    assert grouped | {n["id"] for n in notes} == set(box)  # every node in a group, but the note


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_say_what_they_do_and_title_their_outputs(path):
    graph = json.loads(path.read_text())
    note, = [n for n in graph["nodes"] if n["type"] == "MarkdownNote"]
    assert note["widgets_values"][0].startswith("## ") and "**To change:**" in note["widgets_values"][0]
    for node in graph["nodes"]:
        if node["type"] in ("PreviewImage", "SaveImage"):
            assert node.get("title"), f"untitled {node['type']} {node['id']}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_name_the_models_they_need_where_they_go_and_where_they_come_from(path):
    graph = json.loads(path.read_text())
    chosen = {str(value).split("/")[-1] for node in graph["nodes"] for value in node["widgets_values"]
              if str(value).endswith(".safetensors")}
    listed = {model["name"]: model for model in graph.get("models", [])}
    downloadable = chosen - {"my_dog.safetensors"}  # the user's own LoRA, from Save Personalized
    assert set(listed) == downloadable
    note = next(n for n in graph["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]
    for name, model in listed.items():
        assert set(model) == {"name", "url", "directory"}
        # the frontend offers a download only from these sites and of .safetensors files
        assert model["url"].startswith("https://huggingface.co/") and name.endswith(".safetensors")
        assert model["directory"] in ("checkpoints", "clip_vision", "ipadapter", "dino")
        if path.name.startswith("2_"):
            assert f"models/{model['directory']}" in note and name in note


def test_each_workflow_has_a_thumbnail_for_its_template_card():
    from PIL import Image

    for path in WORKFLOWS:  # the template browser asks for <name>.jpg beside the workflow
        with Image.open(path.with_suffix(".jpg")) as picture:
            assert picture.format == "JPEG" and picture.size == (512, 512), path.name
    assert sorted(p.stem for p in FOLDER.iterdir() if p.suffix == ".jpg") == [p.stem for p in WORKFLOWS]
