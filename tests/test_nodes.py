"""The nodes' contract in ComfyUI's own Python, with its V3 node API (comfy_api) and its folders, but no
server: declarations, and the whole graph run inside inference mode. Run with COMFYUI_DIR set, by
COMFYUI_PYTHON (ComfyUI's environment, where comfy_api imports); skipped in a Python without ComfyUI's
packages. The pack's model and output folders are pointed at a temporary folder per test."""

import asyncio
import base64
import dataclasses
import importlib.util
import io
import itertools
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch
from PIL import Image
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON")
# In another Python than ComfyUI's (make test's .venv), the tests below run in a child pytest of ComfyUI's Python.
ELSEWHERE = bool(COMFYUI_DIR and COMFYUI_PYTHON) and \
    Path(sys.prefix).resolve() != Path(COMFYUI_PYTHON).absolute().parent.parent.resolve()
FOLDER_KINDS = ("checkpoints", "diffusers", "loras", "embeddings", "clip_vision", "echodistill", "ipadapter", "dino")


def comfy_api():
    """ComfyUI's V3 API from COMFYUI_DIR, imported as ComfyUI imports it on a CPU (skip where it cannot be)."""
    if not COMFYUI_DIR:
        pytest.skip("set COMFYUI_DIR, and run with COMFYUI_PYTHON: the nodes are ComfyUI V3 nodes")
    if ELSEWHERE:
        pytest.skip("not needed here: run in ComfyUI's Python by test_the_nodes_tests_pass_in_comfyuis_python")
    if COMFYUI_DIR not in sys.path:
        sys.path.insert(0, COMFYUI_DIR)
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # before comfy.model_management is imported
        from comfy_api.latest import io as comfy_io
    except ImportError as error:
        pytest.skip(f"ComfyUI's packages are not in this Python ({error}); run with COMFYUI_PYTHON")
    return comfy_io


@pytest.fixture(scope="module")
def pack():
    """The pack imported the way ComfyUI imports it (a package from its folder) and its nodes registered the
    way ComfyUI registers them (comfy_entrypoint, each under its schema's node id)."""
    comfy_api()
    spec = importlib.util.spec_from_file_location("echodistill_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    nodes = asyncio.run(asyncio.run(module.comfy_entrypoint()).get_node_list())
    schemas = {node: node.GET_SCHEMA() for node in nodes}
    module.NODE_CLASS_MAPPINGS = {schema.node_id: node for node, schema in schemas.items()}
    module.NODE_DISPLAY_NAME_MAPPINGS = {schema.node_id: schema.display_name for schema in schemas.values()}
    yield module
    for name in [name for name in sys.modules if name.startswith("echodistill_pack")]:
        del sys.modules[name]


@pytest.fixture
def host(pack, tmp_path, monkeypatch):
    """The adapter, with ComfyUI's folders (folder_paths) in tmp_path: models/<kind> and output."""
    adapter = sys.modules["echodistill_pack.nodes.comfyui_host"]
    folder_paths = adapter.folder_paths
    for kind in FOLDER_KINDS:
        extensions = folder_paths.folder_names_and_paths.get(kind, ([], set()))[1]
        monkeypatch.setitem(folder_paths.folder_names_and_paths, kind, ([str(tmp_path / "models" / kind)], extensions))
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return adapter


@pytest.mark.skipif(not ELSEWHERE, reason="not needed here: the tests run in this Python" if COMFYUI_DIR else
                    "set COMFYUI_DIR and COMFYUI_PYTHON: the nodes are ComfyUI V3 nodes")
def test_the_nodes_tests_pass_in_comfyuis_python(tmp_path):
    """This Python lacks ComfyUI's packages (av, aiohttp...): every other test of this file runs in ComfyUI's."""
    environment = {name: value for name, value in os.environ.items() if name != "PYTEST_ADDOPTS"}  # its own junit
    report = tmp_path / "junit.xml"
    done = subprocess.run([COMFYUI_PYTHON, "-m", "pytest", "-p", "no:cacheprovider", "-rfEs", f"--junitxml={report}",
                           __file__], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=7200)
    print(done.stdout[-6000:])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    suite = ElementTree.parse(report).getroot().find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")}
    # Every test ran and passed there; the one skipped is this one.
    assert counts["failures"] == counts["errors"] == 0 and counts["skipped"] == 1 and counts["tests"] > 1, counts


def test_every_node_is_prefixed_described_and_tooltipped(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    for node_id, node in pack.NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("EchoDistill") and node.CATEGORY == "EchoDistill" and node.DESCRIPTION
        assert callable(getattr(node(), node.FUNCTION))
        inputs = node.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, (kind, *options) in inputs.get(section, {}).items():
                assert options and options[0].get("tooltip"), f"{node_id}.{name} has no tooltip"
                assert kind in WIDGET_TYPES or kind.isupper(), f"{node_id}.{name}"
                if kind == "COMBO" and "default" in options[0]:
                    assert options[0]["default"] in options[0]["options"]
        outputs = getattr(node, "RETURN_TYPES")
        assert len(getattr(node, "OUTPUT_TOOLTIPS", outputs)) == len(outputs)
        assert outputs or node.OUTPUT_NODE


def test_teacher_and_student_sockets_differ(pack):
    mappings = pack.NODE_CLASS_MAPPINGS
    assert mappings["EchoDistillLoadTeacher"].RETURN_TYPES != mappings["EchoDistillLoadStudent"].RETURN_TYPES
    train = mappings["EchoDistillTrain"].INPUT_TYPES()["required"]
    assert train["teacher"][0] == mappings["EchoDistillLoadTeacher"].RETURN_TYPES[0]
    assert train["student"][0] == mappings["EchoDistillLoadStudent"].RETURN_TYPES[0]


def test_load_image_networks_feeds_trains_optional_input(pack):
    node = pack.NODE_CLASS_MAPPINGS["EchoDistillLoadImageNetworks"]
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["EchoDistillLoadImageNetworks"] == "EchoDistill Load Image Networks"
    train = pack.NODE_CLASS_MAPPINGS["EchoDistillTrain"].INPUT_TYPES()
    assert train["optional"]["image_networks"][0] == node.RETURN_TYPES[0] == "ECHODISTILL_IMAGE_NETWORKS"
    widgets = node.INPUT_TYPES()["required"]
    assert {name: options["default"] for name, (_, options) in widgets.items()} == {
        "discriminators": "teacher", "feature_network": "teacher", "clip_vision": "none", "ip_adapter": "none",
        "dino": "none", "dinov2": "none", "precision": "auto"}
    assert "models/dino" in widgets["dino"][1]["tooltip"] and "models/dino" in widgets["dinov2"][1]["tooltip"]


NODE_IDS = itertools.count(1)


def run(pack, node_type, node_id=None, **inputs):
    """Execute a node as ComfyUI does: a clone of its class holding the hidden inputs (its node id; each call a node
    of its own unless `node_id` says which). The io.NodeOutput unpacks as the node's outputs."""
    node = pack.NODE_CLASS_MAPPINGS[node_type]
    hidden = {comfy_api().Hidden.unique_id: str(node_id or f"test{next(NODE_IDS)}")}
    return node.PREPARE_CLASS_CLONE(hidden).execute(**inputs)


def bundled_pair(pack):
    teacher, = run(pack, "EchoDistillLoadTeacher", model="tiny teacher (bundled)", family="auto-detect", precision="auto")
    student, = run(pack, "EchoDistillLoadStudent", model="tiny one-step student (bundled)", precision="auto",
                   family="auto-detect")
    return teacher, student


def cup(pack):
    """The bundled pair and a two-photo <cup> concept; call it inside inference mode, as ComfyUI runs nodes."""
    teacher, student = bundled_pair(pack)
    concept, = run(pack, "EchoDistillConceptImages", images=torch.rand(2, 32, 32, 3), token="<cup>",
                   class_word="cup", initializer_word="")
    return teacher, student, concept


def test_the_whole_graph_runs_inside_inference_mode(pack, host, tmp_path):
    with torch.inference_mode():  # as ComfyUI runs every prompt
        teacher, student = bundled_pair(pack)
        photos = torch.rand(3, 40, 40, 3)  # IMAGE batches: [B, H, W, 3] in 0..1, inference tensors
        concept, = run(pack, "EchoDistillConceptImages", images=photos[:2], token="<toy>", class_word="toy",
                       initializer_word="")
        concept, = run(pack, "EchoDistillConceptImages", images=torch.rand(1, 24, 32, 3), token="<toy>",
                       class_word="toy", initializer_word="", add_to=concept)
        assert len(concept.images) == 3
        one_step, personal_teacher, plot, _ = run(pack, "EchoDistillTrain", teacher=teacher, student=student,
                                               concept=concept, steps=2, parameterisation="custom_diffusion",
                                               memory="8 GB", echo=True, seed=1, preview_every=1)
        assert plot.shape[0] == 1 and plot.shape[-1] == 3 and len(one_step.history) == 2
        config = one_step.personalization.config  # the tiny models ignore the memory preset
        assert config.batch_size == 4 and not config.offload and not config.gradient_checkpointing
        images, = run(pack, "EchoDistillOneStepSample", model=one_step, prompt="a photo of a <toy> toy",
                      seed=3, batch_size=2, steps=1)
        size = teacher.model.image_size()
        assert images.shape == (2, size, size, 3)
        teacher_images, = run(pack, "EchoDistillTeacherSample", model=personal_teacher, prompt="a <toy> toy",
                              seed=3, batch_size=1, steps=2, cfg=3.0)
        assert teacher_images.shape == (1, size, size, 3)

        saved = run(pack, "EchoDistillSavePersonalized", model=one_step, name="my toy")
        again = run(pack, "EchoDistillSavePersonalized", model=one_step, name="my toy")
        assert saved.ui["text"] != again.ui["text"]  # a number is added, nothing is overwritten
        assert sorted(p.name for p in (tmp_path / "models" / "loras").iterdir()) == \
            ["my toy.safetensors", "my toy_00001.safetensors"]
        with safe_open(str(tmp_path / "models" / "embeddings" / "my toy.safetensors"), "pt") as file:
            assert file.get_tensor("emb_params").shape == (1, teacher.text.width)
        with safe_open(str(tmp_path / "models" / "loras" / "my toy.safetensors"), "pt") as file:
            assert file.metadata()["echodistill.trigger_word"] == "<toy>"
            assert all(key.startswith("lora_unet_") and key.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))
                       for key in file.keys())

        result = pack.NODE_CLASS_MAPPINGS["EchoDistillLoadPersonalized"].INPUT_TYPES()["required"]["result"][1]["options"]
        assert result == ["my toy.safetensors", "my toy_00001.safetensors", "toy_seed1_2steps.safetensors"]  # Train's
        loaded, _ = run(pack, "EchoDistillLoadPersonalized", teacher=teacher, student=student,
                        result="my toy.safetensors")
        again_images, = run(pack, "EchoDistillOneStepSample", model=loaded, prompt="a photo of a <toy> toy",
                            seed=3, batch_size=2, steps=1)
        assert torch.equal(again_images, images)


NO_FILES = dict(clip_vision="none", ip_adapter="none", dino="none", dinov2="none")


def test_a_failed_run_keeps_its_last_good_state_and_autosaves_on_the_way(pack, host, monkeypatch):
    trainer_module = sys.modules["echodistill_pack.echodistill_core.trainer"]
    original = trainer_module.EchoDistillTrainer.train_step

    def nan_at_step_three(trainer):
        if trainer.step == 2:
            raise trainer_module.NonFiniteLossError("the student loss became nan at step 3")
        return original(trainer)
    monkeypatch.setattr(trainer_module.EchoDistillTrainer, "train_step", nan_at_step_three)
    with torch.inference_mode():
        teacher, student, concept = cup(pack)
        settings = dict(teacher=teacher, student=student, concept=concept, steps=4, parameterisation="lora",
                        memory="12 GB", echo=False, seed=0, preview_every=0)
        with pytest.raises(RuntimeError, match="nan at step 3. The state after step 2 is saved as "
                           "cup_seed0_step2.safetensors in .*: choose it as resume_state to continue, with lower "
                           "learning rates"):
            run(pack, "EchoDistillTrain", **settings, save_every=1)
        states = host.states_folder()
        assert sorted(p.name for p in states.iterdir()) == ["cup_seed0_autosave.safetensors", "cup_seed0_step2.safetensors"]
        monkeypatch.setattr(trainer_module.EchoDistillTrainer, "train_step", original)
        one_step, _, _, _ = run(pack, "EchoDistillTrain", **settings, resume_state="cup_seed0_step2.safetensors")
    assert [entry["step"] for entry in one_step.history] == [1, 2, 3, 4]
    assert (host.results_folder() / "cup_seed0_4steps.safetensors").is_file()  # the finished result, saved by Train


def test_train_runs_with_the_chosen_networks_and_reports_what_is_active(pack, host, monkeypatch):
    sent = []
    monkeypatch.setattr(host, "send_to_browser", lambda event, data: sent.append((event, data)))
    with torch.inference_mode():
        teacher, student, concept = cup(pack)
        settings = dict(teacher=teacher, student=student, concept=concept, steps=1, parameterisation="lora",
                        memory="12 GB", echo=False, seed=0, preview_every=0, node_id="7")
        defaults, = run(pack, "EchoDistillLoadImageNetworks", discriminators="teacher", feature_network="teacher",
                        precision="auto", **NO_FILES)
        one_step, _, _, summary = run(pack, "EchoDistillTrain", **settings, image_networks=defaults)
        _, _, _, unconnected = run(pack, "EchoDistillTrain", **settings)
        no_feature, = run(pack, "EchoDistillLoadImageNetworks", discriminators="teacher", feature_network="none",
                          precision="auto", **NO_FILES)
        _, _, _, without_feature = run(pack, "EchoDistillTrain", **settings, image_networks=no_feature)
    assert len(one_step.history) == 1
    lines = summary.splitlines()
    assert "discriminators: the base teacher's features" in lines
    assert "feature x1 on the base teacher's features" in lines[1]
    # Unconnected, the bundled tiny models also train with their own image network, as make demo does.
    assert "feature x1 on DINO ViT" in unconnected.splitlines()[1] and "(image-network)" in unconnected
    assert "discriminators: the base teacher's features, DINO ViT" in unconnected
    assert "no feature loss" in without_feature.splitlines()[1] and "feature x" not in without_feature
    summaries = [data for event, data in sent if event == "echodistill.summary"]
    assert lines[-1] == f"result: {host.results_folder() / 'cup_seed0_1steps.safetensors'}"
    assert summaries[0]["node"] == "7" and summaries[0]["lines"] == lines[:-1]  # the run's parts, shown as it starts
    assert summaries[0]["total"] == 1 and summaries[0]["echo_start"] is None and summaries[0]["history"] == []
    assert summaries[2]["lines"] == without_feature.splitlines()[:-1]


def test_train_refuses_image_networks_its_memory_preset_has_no_room_for(pack):
    core = sys.modules["echodistill_pack.echodistill_core.image_networks"]
    large = core.RunNetworks([torch.nn.Linear(16384, 16384, device="meta")], "teacher")  # 0.5 GB in bf16
    with torch.inference_mode():
        teacher, student, concept = cup(pack)
        with pytest.raises(ValueError, match="more than the 8 GB memory preset leaves room for"):
            run(pack, "EchoDistillTrain", teacher=dataclasses.replace(teacher, tiny=False), student=student,
                concept=concept, steps=1, parameterisation="lora", memory="8 GB", echo=False, seed=0,
                preview_every=0, image_networks=large)


@pytest.mark.parametrize("discriminators, feature", [("paper", "teacher"), ("teacher", "ip-adapter"),
                                                     ("paper", "ip-adapter")])
def test_a_choice_without_its_files_is_refused_at_queue_time_with_the_cores_message(pack, discriminators, feature):
    core = sys.modules["echodistill_pack.echodistill_core.image_networks"]
    with pytest.raises(core.CheckpointError) as refused:
        core.choose_networks(discriminators, feature, core.ImageNetworkFiles())
    node = pack.NODE_CLASS_MAPPINGS["EchoDistillLoadImageNetworks"]
    assert node.validate_inputs(discriminators=discriminators, feature_network=feature, **NO_FILES) == str(refused.value)
    assert "models/clip_vision" in str(refused.value)
    with pytest.raises(core.CheckpointError, match="needs the"):  # queued past validation: refused when run
        run(pack, "EchoDistillLoadImageNetworks", discriminators=discriminators, feature_network=feature,
            precision="auto", **NO_FILES)


def test_image_network_choices_that_need_no_file_pass_and_absent_files_are_named(pack):
    node = pack.NODE_CLASS_MAPPINGS["EchoDistillLoadImageNetworks"]
    for discriminators in ("teacher", "teacher + image networks"):
        for feature in ("teacher", "none"):
            assert node.validate_inputs(discriminators=discriminators, feature_network=feature, **NO_FILES) is True
    files = {**NO_FILES, "dino": "dino-vits16"}  # outside ComfyUI no model folder lists anything
    assert node.validate_inputs(discriminators="paper", feature_network="teacher", **files) == (
        "dino: dino-vits16 is not in ComfyUI's models/dino folder; put it there and refresh the page, or choose another")
    assert node.validate_inputs(discriminators="paper", feature_network="teacher", **{**NO_FILES, "dino": None}) \
        .startswith("the paper discriminator set needs the dinov2 and clip_vision files")  # dino linked: known at run


def test_bad_names_and_prompts_get_clear_errors(pack, host):
    with pytest.raises(ValueError, match="plain file name"):
        host.safe_file_name("../../etc/passwd")
    with torch.inference_mode():
        teacher, student, concept = cup(pack)
        one_step, *_ = run(pack, "EchoDistillTrain", teacher=teacher, student=student, concept=concept,
                             steps=1, parameterisation="lora", memory="12 GB", echo=False, seed=0, preview_every=0)
        with pytest.raises(ValueError, match="does not mention the concept's token <cup>"):
            run(pack, "EchoDistillOneStepSample", model=one_step, prompt="a cup", seed=0, batch_size=1, steps=1)
        with pytest.raises(ValueError, match="empty|no concept"):
            run(pack, "EchoDistillConceptImages", images=torch.rand(0, 32, 32, 3), token="<cup>", class_word="cup",
                initializer_word="")
        with pytest.raises(ValueError, match="not in ComfyUI's models/checkpoints folder any more"):
            sys.modules["echodistill_pack.nodes.loaders"].load("student", "checkpoints/gone.safetensors",
                                                                "auto-detect", "auto")


def test_cancel_keeps_a_state_that_resumes_to_the_same_weights(pack, host):
    training = sys.modules["echodistill_pack.nodes.training"]
    with torch.inference_mode():
        teacher, student = bundled_pair(pack)
        concept, = run(pack, "EchoDistillConceptImages", images=torch.rand(3, 32, 32, 3), token="<cup>",
                       class_word="cup", initializer_word="")
        settings = dict(teacher=teacher, student=student, concept=concept, steps=4,
                        parameterisation="custom_diffusion", memory="12 GB", echo=True, seed=5, preview_every=0)
        straight, *_ = run(pack, "EchoDistillTrain", **settings)

        class CancelAtStepTwo(host.Progress):
            def update(self, step, preview=None):
                if step == 2:
                    raise host.Interrupted("cancelled")

        original = host.Progress
        host.Progress = CancelAtStepTwo
        try:
            with pytest.raises(host.Interrupted):
                run(pack, "EchoDistillTrain", **settings)
        finally:
            host.Progress = original
        states = training.EchoDistillTrain.state_choices()
        assert states[1:] == ["cup_seed5_step2.safetensors"]
        resumed, *_ = run(pack, "EchoDistillTrain", **settings, resume_state=states[1])
    for key, value in straight.personalization.student_adapters.state_dict().items():
        torch.testing.assert_close(resumed.personalization.student_adapters.state_dict()[key], value)
    torch.testing.assert_close(resumed.personalization.token.vector, straight.personalization.token.vector)


def test_display_names_all_begin_with_the_packs_name(pack):
    names = list(pack.NODE_DISPLAY_NAME_MAPPINGS.values())
    assert all(name.startswith("EchoDistill ") for name in names) and len(set(names)) == len(names)
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["EchoDistillOneStepSample"] == "EchoDistill One-Step Sample"


def train_widgets(**changes):
    return {"steps": 300, "preview_every": 25, "teacher_lr": 0.0, "student_lr": 0.0, "resolution": 0, "lora_rank": 4,
            "resume_state": "none (start fresh)", **changes}


def test_train_refuses_invalid_widgets_at_queue_time_naming_each_problem(pack, host):
    train = pack.NODE_CLASS_MAPPINGS["EchoDistillTrain"]
    assert train.validate_inputs(**train_widgets()) is True
    assert train.validate_inputs(**train_widgets(teacher_lr=1e-4, resolution=64)) is True
    assert train.validate_inputs(**train_widgets(steps=0)) is True  # 0: the preset's
    refused = train.validate_inputs(**train_widgets(steps=-1, resolution=100, student_lr=-1.0))
    assert "steps must be at least 1, not -1" in refused
    assert "resolution must be 0 (the student's size) or a multiple of 8 from 8 px, not 100" in refused
    assert "student_lr must be positive, not -1.0" in refused and refused.endswith("queue again.")
    assert "lora_rank must be at least 1" in train.validate_inputs(**train_widgets(lora_rank=0))
    assert "preview_every must be 0 (never) or more" in train.validate_inputs(**train_widgets(preview_every=-5))
    gone = train.validate_inputs(**train_widgets(resume_state="dog_seed1_step9.safetensors"))
    assert "resume_state dog_seed1_step9.safetensors is no longer in" in gone and "none (start fresh)" in gone
    assert train.validate_inputs(steps=None, resolution=None) is True  # linked from other nodes: checked at run


def test_concept_images_refuse_bad_words_and_captions_at_queue_time(pack):
    node = pack.NODE_CLASS_MAPPINGS["EchoDistillConceptImages"]
    assert node.validate_inputs(token="<cup>", class_word="cup", initializer_word="", captions="") is True
    assert "must be one word without spaces" in node.validate_inputs(token="my cup", class_word="cup",
                                                                        initializer_word="", captions="")
    assert "class word is empty" in node.validate_inputs(token="<cup>", class_word=" ", initializer_word="", captions="")
    refused = node.validate_inputs(token="<cup>", class_word="cup", initializer_word="",
                                   captions="a <cup> cup\na mug on a table\n\n")
    assert refused.startswith("caption 2 ('a mug on a table') does not mention the token <cup>")
    assert node.validate_inputs(token="<cup>", class_word="cup", initializer_word="",
                                captions="a <cup> cup | a photo of a <cup> cup\na <cup> cup") is True
    refused = node.validate_inputs(token="<cup>", class_word="cup", initializer_word="",
                                   captions="a <cup> cup | a photo of a cup")
    assert refused.startswith("caption 1 ('a photo of a cup') does not mention the token <cup>")
    assert "has an empty alternative" in node.validate_inputs(token="<cup>", class_word="cup", initializer_word="",
                                                              captions="a <cup> cup |")
    assert "contains the placeholder token" in node.validate_inputs(token="<cup>", class_word="cup",
                                                                     initializer_word="<cup>", captions="")


def test_loaders_name_the_folder_a_missing_model_belongs_in_at_queue_time(pack, host, tmp_path):
    for node_id, role in (("EchoDistillLoadTeacher", "teacher"), ("EchoDistillLoadStudent", "student")):
        node = pack.NODE_CLASS_MAPPINGS[node_id]
        assert node.validate_inputs(model=node.INPUT_TYPES()["required"]["model"][1]["options"][0]) is True  # the bundled one
        refused = node.validate_inputs(model="checkpoints/sd_turbo.safetensors")
        assert refused.startswith("sd_turbo.safetensors is not in ComfyUI's models/checkpoints folder "
                                  f"({tmp_path / 'models' / 'checkpoints'}). Put the {role} there")


def test_samplers_and_save_refuse_empty_prompts_and_paths_at_queue_time(pack):
    for node_id in ("EchoDistillOneStepSample", "EchoDistillTeacherSample"):
        node = pack.NODE_CLASS_MAPPINGS[node_id]
        assert node.validate_inputs(prompt="a <cup> cup") is True and "the prompt is empty" in node.validate_inputs(prompt=" ")
    save = pack.NODE_CLASS_MAPPINGS["EchoDistillSavePersonalized"]
    assert save.validate_inputs(name="my cup") is True
    assert "must be a plain file name" in save.validate_inputs(name="../models/cup")


@pytest.fixture
def trained_cup(pack, host):
    with torch.inference_mode():
        teacher, student, concept = cup(pack)
        one_step, teacher_model, plot, summary = run(
            pack, "EchoDistillTrain", teacher=teacher, student=student, concept=concept, steps=1,
            parameterisation="lora", memory="12 GB", echo=False, seed=0, preview_every=0, lora_rank=2)
    return one_step, teacher_model, plot, summary


def test_train_exposes_lora_rank_and_lists_the_learning_rates_it_uses(pack, trained_cup):
    one_step, _, plot, summary = trained_cup
    config = one_step.personalization.config
    assert config.lora_rank == 2 and "LoRA rank 2" in summary
    assert config.teacher_lr == 2e-4 and "lr 0.0002" in summary  # 0 on the widget: the tiny preset's, shown
    assert f"result: {sys.modules['echodistill_pack.nodes.comfyui_host'].results_folder()}" in summary
    assert plot.shape[2] == 768  # the training view's picture


def test_save_lists_what_it_wrote_and_where_and_replaces_only_when_asked(pack, host, trained_cup, tmp_path):
    one_step = trained_cup[0]
    umask = os.umask(0o022)
    try:
        with torch.inference_mode():
            first = run(pack, "EchoDistillSavePersonalized", model=one_step, name="cup").ui["text"]
            replaced = run(pack, "EchoDistillSavePersonalized", model=one_step, name="cup", overwrite=True).ui["text"]
            kept = run(pack, "EchoDistillSavePersonalized", model=one_step, name="cup").ui["text"]
    finally:
        os.umask(umask)
    loras = tmp_path / "models" / "loras"
    assert first == replaced and first[0] == f"LoRA: cup.safetensors in {loras}"
    assert first[1].startswith(f"embedding: cup.safetensors in {tmp_path / 'models' / 'embeddings'}")
    assert "embedding:cup cup" in first[1] and first[2].startswith(f"result: cup.safetensors in {host.results_folder()}")
    assert kept[0] == f"LoRA: cup_00001.safetensors in {loras}"
    for folder in ("loras", "embeddings", "echodistill"):
        for path in (tmp_path / "models" / folder).iterdir():
            assert path.stat().st_mode & 0o777 == 0o644, f"{path} is not readable by others"


def test_train_sends_previews_from_step_one_at_their_real_size_with_their_prompts(pack, host, monkeypatch):
    sent = []
    monkeypatch.setattr(host, "send_to_browser", lambda event, data: sent.append((event, data)))
    with torch.inference_mode():
        teacher, student, concept = cup(pack)
        run(pack, "EchoDistillTrain", teacher=teacher, student=student, concept=concept, steps=5,
            parameterisation="lora", memory="12 GB", echo=True, seed=0, preview_every=2, node_id="4",
            preview_prompts="a <cup> cup\n\na red ring on teal\n")
    previews = [data for event, data in sent if event == "echodistill.preview"]
    assert [data["step"] for data in previews] == [1, 2, 4, 5]
    assert previews[0]["prompts"] == ["a <cup> cup", "a red ring on teal"] and previews[0]["size"] == [32, 32]
    for url in previews[0]["images"]:
        image = Image.open(io.BytesIO(base64.b64decode(url.removeprefix("data:image/png;base64,"))))
        assert image.size == (32, 32)  # the browser enlarges it and says its real size
    progress = [data for event, data in sent if event == "echodistill.progress"]
    assert [data["step"] for data in progress] == [1, 2, 3, 4, 5] and progress[0]["echo_start"] == 5
    assert set(progress[0]["losses"]) == {"teacher", "student", "discriminator"} and "echo" in progress[-1]["losses"]
    assert [data["node"] for event, data in sent if event == "echodistill.finished"] == ["4"]


def test_samplers_show_progress_stop_on_cancel_and_upscale_for_viewing(pack, host, trained_cup, monkeypatch):
    one_step, personal_teacher, _, _ = trained_cup
    updates = []

    class Recording(host.Progress):
        def update(self, step, preview=None):
            updates.append((step, self.total))
            if self.total == 6 and step == 3:
                raise host.Interrupted("cancelled")
    monkeypatch.setattr(host, "Progress", Recording)
    with torch.inference_mode():
        images, = run(pack, "EchoDistillOneStepSample", model=one_step, prompt="a <cup> cup", seed=0, batch_size=2,
                      steps=1)
        large, = run(pack, "EchoDistillOneStepSample", model=one_step, prompt="a <cup> cup", seed=0, batch_size=2,
                     steps=1, upscale=4)
        teacher_images, = run(pack, "EchoDistillTeacherSample", model=personal_teacher, prompt="a <cup> cup", seed=0,
                              batch_size=1, steps=4, cfg=3.0)
        with pytest.raises(host.Interrupted):
            run(pack, "EchoDistillTeacherSample", model=personal_teacher, prompt="a <cup> cup", seed=0, batch_size=1,
                steps=6, cfg=3.0)
    assert updates == [(1, 1), (1, 1), (1, 4), (2, 4), (3, 4), (4, 4), (1, 6), (2, 6), (3, 6)]
    size = images.shape[1]
    assert large.shape == (2, 4 * size, 4 * size, 3) and teacher_images.shape == (1, size, size, 3)
    assert torch.equal(large[:, ::4, ::4], images) and torch.equal(large[:, 3::4, 1::4], images)


def test_seeds_ask_the_frontend_for_their_control_widget(pack):
    for node_id in ("EchoDistillTrain", "EchoDistillOneStepSample", "EchoDistillTeacherSample"):
        seed = pack.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()["required"]["seed"]
        assert seed[0] == "INT" and seed[1]["control_after_generate"] is True  # web/echodistill.js starts it fixed


def test_choosing_a_preset_fills_in_its_steps_and_rates_and_auto_puts_back_0(pack):
    """What web/echodistill.js fills in when a preset is chosen: each widget whose 0 is the preset's lists every
    preset's value; auto's is 0, since its preset depends on the models."""
    presets = importlib.import_module("echodistill_pack.echodistill_core.config").PRESETS
    inputs = pack.NODE_CLASS_MAPPINGS["EchoDistillTrain"].INPUT_TYPES()
    for name, section in (("steps", "required"), ("teacher_lr", "optional"), ("student_lr", "optional")):
        kind, options = inputs[section][name]
        assert options["default"] == 0
        assert options["echodistill_presets"] == {"auto": 0, **{preset: getattr(config, name)
                                                                for preset, config in presets.items()}}


def test_train_trains_again_only_when_what_it_learns_changes(pack, host, monkeypatch):
    sent = []
    monkeypatch.setattr(host, "send_to_browser", lambda event, data: sent.append(event))
    train = pack.NODE_CLASS_MAPPINGS["EchoDistillTrain"]
    widgets = dict(steps=2, parameterisation="lora", memory="12 GB", echo=False, seed=0, preview_every=0,
                   resume_state="none (start fresh)")
    shown_only = dict(preview_every=1, preview_prompts="a <cup> cup\na red ring", save_every=1)
    assert train.fingerprint_inputs(**widgets) == train.fingerprint_inputs(**{**widgets, **shown_only})
    for changed in (dict(seed=1), dict(steps=3), dict(memory="8 GB"), dict(teacher_lr=1e-4)):
        assert train.fingerprint_inputs(**widgets) != train.fingerprint_inputs(**{**widgets, **changed}), changed

    def trainings():
        return sent.count("echodistill.progress")

    with torch.inference_mode():
        teacher, student, concept = cup(pack)
        linked = dict(teacher=teacher, student=student, concept=concept)
        first = run(pack, "EchoDistillTrain", node_id="5", **linked, **widgets)
        assert trainings() == 2
        again = run(pack, "EchoDistillTrain", node_id="5", **linked, **{**widgets, **shown_only})
        assert trainings() == 2 and again[0] is first[0] and again[3] == first[3]  # the finished run, not a new one
        assert sent[-2:] == ["echodistill.summary", "echodistill.finished"]  # shown again in the node
        run(pack, "EchoDistillTrain", node_id="5", **linked, **{**widgets, "seed": 1})
        assert trainings() == 4
        other, = run(pack, "EchoDistillConceptImages", images=torch.rand(2, 32, 32, 3), token="<cup>",
                     class_word="cup", initializer_word="")
        run(pack, "EchoDistillTrain", node_id="5", **{**linked, "concept": other}, **{**widgets, "seed": 1})
        assert trainings() == 6  # a concept made again (its photos changed): a new run


def test_trains_fingerprint_reads_the_resume_states_file(pack, host):
    train = pack.NODE_CLASS_MAPPINGS["EchoDistillTrain"]
    state = host.states_folder() / "cup_seed0_autosave.safetensors"
    state.parent.mkdir(parents=True)
    state.write_bytes(b"a state")
    kept = train.fingerprint_inputs(steps=2, resume_state=state.name)
    state.write_bytes(b"a state kept again, later")  # the autosave is replaced under its name
    assert train.fingerprint_inputs(steps=2, resume_state=state.name) != kept


def test_loaders_fingerprint_the_model_file_they_read(pack, host, tmp_path):
    node = pack.NODE_CLASS_MAPPINGS["EchoDistillLoadStudent"]
    checkpoint = tmp_path / "models" / "checkpoints" / "student.safetensors"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"first")
    before = node.fingerprint_inputs(model="checkpoints/student.safetensors", family="auto-detect", precision="auto")
    assert before == node.fingerprint_inputs(model="checkpoints/student.safetensors", family="auto-detect",
                                             precision="auto")
    checkpoint.write_bytes(b"replaced by another download")
    assert node.fingerprint_inputs(model="checkpoints/student.safetensors") != before


def test_personalized_model_refuses_a_stock_model_that_is_not_the_trained_student(pack, trained_cup):
    stock = sys.modules["echodistill_pack.nodes.stock"]
    export = sys.modules["echodistill_pack.echodistill_core.export"]
    one_step = trained_cup[0]
    student = dataclasses.replace(one_step.base, name="checkpoints/sd_turbo.safetensors", family="sd-turbo")
    lora = export.student_lora_tensors(one_step.personalization, student.model.unet, dtype=torch.float32)
    own = stock.student_layer_weights(student, lora)
    assert own and set(own) == {key.split(".", 1)[0] for key in lora}
    predicts = student.model.schedule.prediction_type
    assert stock.stock_model_problem(student, own, own, predicts, "SD20") is None
    loaded_in_half = {stem: weight.half().float() for stem, weight in own.items()}
    assert stock.stock_model_problem(student, own, loaded_in_half, predicts, "SD20") is None
    advice = "connect the MODEL of the checkpoint the student was loaded from (checkpoints/sd_turbo.safetensors)"
    generator = torch.Generator().manual_seed(0)
    other_weights = {stem: weight + weight.std() * torch.randn(weight.shape, generator=generator)
                     for stem, weight in own.items()}  # SD 2.1 where SD-Turbo was trained: same names and shapes
    refused = stock.stock_model_problem(student, own, other_weights, predicts, "SD20")
    assert refused.startswith("this SD20 MODEL is a model of the same shape but not the SD-Turbo student") and advice in refused
    refused = stock.stock_model_problem(student, own, own, "v_prediction" if predicts != "v_prediction" else "epsilon",
                                        "SD20")
    assert "SD 2.1 768 is v-prediction, SD-Turbo epsilon" in refused and advice in refused
    narrower = {stem: weight[:, :-1] for stem, weight in own.items()}  # SD 1.x: other text width, same layer names
    refused = stock.stock_model_problem(student, own, narrower, predicts, "SD15")
    assert refused.startswith("this SD15 MODEL is another architecture than the SD-Turbo student") and advice in refused
    missing = stock.stock_model_problem(student, own, {}, predicts, "Flux")
    assert f"{len(own)} of the personalization's {len(own)} layers" in missing and "not a SD-Turbo model" in missing


def test_paper_metrics_scores_the_trained_student_beside_the_untouched_one(pack, host, trained_cup):
    """No CLIP or DINO file chosen: the tiny world's judge stands in, and the table says so."""
    one_step, teacher_model, _, _ = trained_cup
    node = pack.NODE_CLASS_MAPPINGS["EchoDistillPaperMetrics"]
    assert isinstance(node.validate_inputs(prompts="a photo of a cup"), str)  # no place for the subject: refused
    with torch.inference_mode():
        _, _, concept = cup(pack)
        output = run(pack, "EchoDistillPaperMetrics", one_step_model=one_step, teacher=teacher_model,
                     concept=concept, clip="none", dino="none", prompts="a {} on teal\na big {} on gray", seeds=2,
                     role="student")
    table, grid = output
    assert "| judge-I |" in table and "not a network of the paper" in table and output.ui["text"][0] == table.splitlines()[0]
    assert grid.shape == (1, 3 * 128, 5 * 128, 3)  # the photos, then per prompt: two seeds, a gap, two seeds


SHOWN_ONLY_FIELDS = ("preview_every", "preview_prompt")  # what a run shows on the way: each face its own


def test_train_plans_its_run_with_the_recipe_as_the_command_line_does(pack, tmp_path):
    """The Train node's defaults and the command line's are the run recipe's, and the same models, photos and
    words give both the same run."""
    core = "echodistill_pack.echodistill_core"
    cli = importlib.import_module(f"{core}.cli")
    recipe = importlib.import_module(f"{core}.recipe")
    tiny = importlib.import_module(f"{core}.lab.tiny")
    training = sys.modules["echodistill_pack.nodes.training"]
    sockets = sys.modules["echodistill_pack.nodes.sockets"]
    defaults = {item.id: item.default for item in pack.NODE_CLASS_MAPPINGS["EchoDistillTrain"].GET_SCHEMA().inputs
                if getattr(item, "default", None) is not None}
    assert (defaults["memory"], defaults["preset"]) == (recipe.DEFAULT_MEMORY, recipe.DEFAULT_PRESET)
    loader = {item.id: item.default for item in pack.NODE_CLASS_MAPPINGS["EchoDistillLoadStudent"].GET_SCHEMA().inputs
              if getattr(item, "default", None) is not None}
    assert loader["precision"] == recipe.DEFAULT_PRECISION
    widgets = {name: value for name, value in defaults.items()
               if name not in ("resume_state", "save_every", "preset", "memory")}
    teacher, student, text = tiny.tiny_pair("v_prediction", "sample", image_size=16)
    photos = [torch.rand(3, 24, 24) for _ in range(3)]
    concept = sockets.Concept(photos, "<cup>", "cup")
    for bundled in (False, True):
        pair = [sockets.LoadedModel(model, text, name, tiny=bundled) for model, name in ((teacher, "t"), (student, "s"))]
        node_plan, _ = training.plan(*pair, concept, preset=defaults["preset"], memory=defaults["memory"], **widgets)
        folders = [recipe.TINY_ASSETS / role if bundled else tmp_path / role for role in ("teacher", "student")]
        arguments = cli.build_parser().parse_args([
            "train", "--teacher", str(folders[0]), "--student", str(folders[1]), "--images", str(tmp_path),
            "--token", "<cup>", "--class-word", "cup", "--out", str(tmp_path / "cup.safetensors")])
        cli_plan = cli.plan_from_arguments(arguments, photos)
        learned = [name for name in node_plan.config.to_dict() if name not in SHOWN_ONLY_FIELDS]
        assert {name: getattr(node_plan.config, name) for name in learned} == \
            {name: getattr(cli_plan.config, name) for name in learned}
        assert (node_plan.preset, node_plan.memory.name) == (cli_plan.preset, cli_plan.memory.name) == \
            (("tiny", "unlimited") if bundled else ("paper", "12 GB"))
        networks = [[type(network).__name__ if isinstance(network, torch.nn.Module) else network
                     for network in (*plan.networks.discriminators, plan.networks.feature)]
                    for plan in (node_plan, cli_plan)]
        assert networks[0] == networks[1] == (["teacher", "ImageBackbone", "ImageBackbone"] if bundled
                                              else ["teacher", "teacher"])  # the tiny pair's own image network
