"""The shareable workflows reference only nodes and inputs that exist, and are what the generator
writes (so they stay in step with the nodes' declarations)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
# Choices listed from ComfyUI's folders, empty outside it: the user's files, not the pack's to offer.
FOLDER_LISTINGS = {"model", "resume_state", "clip_vision", "ip_adapter", "dino", "dinov2"}


def generator():
    spec = importlib.util.spec_from_file_location("make_workflows", ROOT / "tools" / "make_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_three_workflows_served_as_examples():
    assert len(WORKFLOWS) == 3
    assert sorted(p.name for p in (ROOT / "example_workflows").glob("*.json")) == [p.name for p in WORKFLOWS]


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
            declared = pack[node["type"]].INPUT_TYPES()
            choices = {name: kind for section in ("required", "optional")
                       for name, (kind, *_) in declared.get(section, {}).items() if isinstance(kind, list)}
            for name, value in zip(widgets, node["widgets_values"]):
                if name in choices and name not in FOLDER_LISTINGS:
                    assert value in choices[name], f"{node['type']}.{name} = {value!r}"
    for link_id, source, slot, target, target_slot, kind in graph["links"]:
        assert nodes[source]["outputs"][slot]["type"] == kind == nodes[target]["inputs"][target_slot]["type"]
        assert link_id in nodes[source]["outputs"][slot]["links"]
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
    sys.modules.pop("echodistill_pack", None)


def test_workflow_files_are_what_the_generator_writes(tmp_path):
    generator().main(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in WORKFLOWS]
    for path in WORKFLOWS:
        assert (tmp_path / path.name).read_text() == path.read_text(), f"run tools/make_workflows.py ({path.name})"


def test_the_workflows_use_every_node_but_load_personalized():
    used = {node["type"] for path in WORKFLOWS for node in json.loads(path.read_text())["nodes"]}
    assert used >= set(generator().pack_nodes()) - {"EchoDistillLoadPersonalized"}
