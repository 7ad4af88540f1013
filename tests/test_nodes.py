"""The nodes' contract, without ComfyUI: declarations, and the whole graph run inside inference mode."""

import base64
import dataclasses
import importlib.util
import io
import os
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


@pytest.fixture(scope="module")
def pack():
    """The pack imported the way ComfyUI imports it: a package from its folder, no comfy modules."""
    spec = importlib.util.spec_from_file_location("echodistill_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    for name in [name for name in sys.modules if name.startswith("echodistill_pack")]:
        del sys.modules[name]


@pytest.fixture
def comfy(pack, tmp_path, monkeypatch):
    adapter = sys.modules["echodistill_pack.nodes.comfy"]
    monkeypatch.setattr(adapter, "_FALLBACK_ROOT", tmp_path)
    return adapter


def test_every_node_is_prefixed_described_and_tooltipped(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    for node_id, node in pack.NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("EchoDistill") and node.CATEGORY == "EchoDistill" and node.DESCRIPTION
        assert callable(getattr(node(), node.FUNCTION))
        inputs = node.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, (kind, *options) in inputs.get(section, {}).items():
                assert options and options[0].get("tooltip"), f"{node_id}.{name} has no tooltip"
                assert isinstance(kind, list) or kind in WIDGET_TYPES or kind.isupper(), f"{node_id}.{name}"
                if isinstance(kind, list) and "default" in options[0]:
                    assert options[0]["default"] in kind
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


def run(pack, node_type, **inputs):
    node = pack.NODE_CLASS_MAPPINGS[node_type]()
    return getattr(node, node.FUNCTION)(**inputs)


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


def test_the_whole_graph_runs_inside_inference_mode(pack, comfy, tmp_path):
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
        assert saved["ui"]["text"] != again["ui"]["text"]  # a number is added, nothing is overwritten
        assert sorted(p.name for p in (tmp_path / "models" / "loras").iterdir()) == \
            ["my toy.safetensors", "my toy_00001.safetensors"]
        with safe_open(str(tmp_path / "models" / "embeddings" / "my toy.safetensors"), "pt") as file:
            assert file.get_tensor("emb_params").shape == (1, teacher.text.width)
        with safe_open(str(tmp_path / "models" / "loras" / "my toy.safetensors"), "pt") as file:
            assert file.metadata()["echodistill.trigger_word"] == "<toy>"
            assert all(key.startswith("lora_unet_") and key.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))
                       for key in file.keys())

        result = pack.NODE_CLASS_MAPPINGS["EchoDistillLoadPersonalized"].INPUT_TYPES()["required"]["result"][0]
        assert result == ["my toy.safetensors", "my toy_00001.safetensors", "toy_seed1_2steps.safetensors"]  # Train's
        loaded, _ = run(pack, "EchoDistillLoadPersonalized", teacher=teacher, student=student,
                        result="my toy.safetensors")
        again_images, = run(pack, "EchoDistillOneStepSample", model=loaded, prompt="a photo of a <toy> toy",
                            seed=3, batch_size=2, steps=1)
        assert torch.equal(again_images, images)


NO_FILES = dict(clip_vision="none", ip_adapter="none", dino="none", dinov2="none")


def test_a_failed_run_keeps_its_last_good_state_and_autosaves_on_the_way(pack, comfy, monkeypatch):
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
        states = comfy.states_folder()
        assert sorted(p.name for p in states.iterdir()) == ["cup_seed0_autosave.safetensors", "cup_seed0_step2.safetensors"]
        monkeypatch.setattr(trainer_module.EchoDistillTrainer, "train_step", original)
        one_step, _, _, _ = run(pack, "EchoDistillTrain", **settings, resume_state="cup_seed0_step2.safetensors")
    assert [entry["step"] for entry in one_step.history] == [1, 2, 3, 4]
    assert (comfy.results_folder() / "cup_seed0_4steps.safetensors").is_file()  # the finished result, saved by Train


def test_train_runs_with_the_chosen_networks_and_reports_what_is_active(pack, comfy, monkeypatch):
    sent = []
    monkeypatch.setattr(comfy, "send_to_browser", lambda event, data: sent.append((event, data)))
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
    assert "feature x1 on the base teacher's features" in lines[1] and unconnected == summary
    assert "no feature loss" in without_feature.splitlines()[1] and "feature x" not in without_feature
    summaries = [data for event, data in sent if event == "echodistill.summary"]
    assert lines[-1] == f"result: {comfy.results_folder() / 'cup_seed0_1steps.safetensors'}"
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
    assert node.VALIDATE_INPUTS(discriminators=discriminators, feature_network=feature, **NO_FILES) == str(refused.value)
    assert "models/clip_vision" in str(refused.value)
    with pytest.raises(core.CheckpointError, match="needs the"):  # queued past validation: refused when run
        run(pack, "EchoDistillLoadImageNetworks", discriminators=discriminators, feature_network=feature,
            precision="auto", **NO_FILES)


def test_image_network_choices_that_need_no_file_pass_and_absent_files_are_named(pack):
    node = pack.NODE_CLASS_MAPPINGS["EchoDistillLoadImageNetworks"]
    for discriminators in ("teacher", "teacher + image networks"):
        for feature in ("teacher", "none"):
            assert node.VALIDATE_INPUTS(discriminators=discriminators, feature_network=feature, **NO_FILES) is True
    files = {**NO_FILES, "dino": "dino-vits16"}  # outside ComfyUI no model folder lists anything
    assert node.VALIDATE_INPUTS(discriminators="paper", feature_network="teacher", **files) == (
        "dino: dino-vits16 is not in ComfyUI's models/dino folder; put it there and refresh the page, or choose another")
    assert node.VALIDATE_INPUTS(discriminators="paper", feature_network="teacher", **{**NO_FILES, "dino": None}) \
        .startswith("the paper discriminator set needs the dinov2 and clip_vision files")  # dino linked: known at run


def test_bad_names_and_prompts_get_clear_errors(pack, comfy):
    with pytest.raises(ValueError, match="plain file name"):
        comfy.safe_file_name("../../etc/passwd")
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


def test_cancel_keeps_a_state_that_resumes_to_the_same_weights(pack, comfy):
    training = sys.modules["echodistill_pack.nodes.training"]
    with torch.inference_mode():
        teacher, student = bundled_pair(pack)
        concept, = run(pack, "EchoDistillConceptImages", images=torch.rand(3, 32, 32, 3), token="<cup>",
                       class_word="cup", initializer_word="")
        settings = dict(teacher=teacher, student=student, concept=concept, steps=4,
                        parameterisation="custom_diffusion", memory="12 GB", echo=True, seed=5, preview_every=0)
        straight, *_ = run(pack, "EchoDistillTrain", **settings)

        class CancelAtStepTwo(comfy.Progress):
            def update(self, step, preview=None):
                if step == 2:
                    raise comfy.Interrupted("cancelled")

        original = comfy.Progress
        comfy.Progress = CancelAtStepTwo
        try:
            with pytest.raises(comfy.Interrupted):
                run(pack, "EchoDistillTrain", **settings)
        finally:
            comfy.Progress = original
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


def test_train_refuses_invalid_widgets_at_queue_time_naming_each_problem(pack, comfy):
    train = pack.NODE_CLASS_MAPPINGS["EchoDistillTrain"]
    assert train.VALIDATE_INPUTS(**train_widgets()) is True
    assert train.VALIDATE_INPUTS(**train_widgets(teacher_lr=1e-4, resolution=64)) is True
    refused = train.VALIDATE_INPUTS(**train_widgets(steps=0, resolution=100, student_lr=-1.0))
    assert "steps must be at least 1, not 0" in refused
    assert "resolution must be 0 (the student's size) or a multiple of 8 from 8 px, not 100" in refused
    assert "student_lr must be positive, not -1.0" in refused and refused.endswith("queue again.")
    assert "lora_rank must be at least 1" in train.VALIDATE_INPUTS(**train_widgets(lora_rank=0))
    assert "preview_every must be 0 (never) or more" in train.VALIDATE_INPUTS(**train_widgets(preview_every=-5))
    gone = train.VALIDATE_INPUTS(**train_widgets(resume_state="dog_seed1_step9.safetensors"))
    assert "resume_state dog_seed1_step9.safetensors is no longer in" in gone and "none (start fresh)" in gone
    assert train.VALIDATE_INPUTS(steps=None, resolution=None) is True  # linked from other nodes: checked at run


def test_concept_images_refuse_bad_words_and_captions_at_queue_time(pack):
    node = pack.NODE_CLASS_MAPPINGS["EchoDistillConceptImages"]
    assert node.VALIDATE_INPUTS(token="<cup>", class_word="cup", initializer_word="", captions="") is True
    assert "must be one word without spaces" in node.VALIDATE_INPUTS(token="my cup", class_word="cup",
                                                                        initializer_word="", captions="")
    assert "class word is empty" in node.VALIDATE_INPUTS(token="<cup>", class_word=" ", initializer_word="", captions="")
    refused = node.VALIDATE_INPUTS(token="<cup>", class_word="cup", initializer_word="",
                                   captions="a <cup> cup\na mug on a table\n\n")
    assert refused.startswith("caption 2 ('a mug on a table') does not mention the token <cup>")
    assert "contains the placeholder token" in node.VALIDATE_INPUTS(token="<cup>", class_word="cup",
                                                                     initializer_word="<cup>", captions="")


def test_loaders_name_the_folder_a_missing_model_belongs_in_at_queue_time(pack, comfy, tmp_path):
    for node_id, role in (("EchoDistillLoadTeacher", "teacher"), ("EchoDistillLoadStudent", "student")):
        node = pack.NODE_CLASS_MAPPINGS[node_id]
        assert node.VALIDATE_INPUTS(model=node.INPUT_TYPES()["required"]["model"][0][0]) is True  # the bundled one
        refused = node.VALIDATE_INPUTS(model="checkpoints/sd_turbo.safetensors")
        assert refused.startswith("sd_turbo.safetensors is not in ComfyUI's models/checkpoints folder "
                                  f"({tmp_path / 'models' / 'checkpoints'}). Put the {role} there")


def test_samplers_and_save_refuse_empty_prompts_and_paths_at_queue_time(pack):
    for node_id in ("EchoDistillOneStepSample", "EchoDistillTeacherSample"):
        node = pack.NODE_CLASS_MAPPINGS[node_id]
        assert node.VALIDATE_INPUTS(prompt="a <cup> cup") is True and "the prompt is empty" in node.VALIDATE_INPUTS(prompt=" ")
    save = pack.NODE_CLASS_MAPPINGS["EchoDistillSavePersonalized"]
    assert save.VALIDATE_INPUTS(name="my cup") is True
    assert "must be a plain file name" in save.VALIDATE_INPUTS(name="../models/cup")


@pytest.fixture
def trained_cup(pack, comfy):
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
    assert f"result: {sys.modules['echodistill_pack.nodes.comfy'].results_folder()}" in summary
    assert plot.shape[2] == 768  # the training view's picture


def test_save_lists_what_it_wrote_and_where_and_replaces_only_when_asked(pack, comfy, trained_cup, tmp_path):
    one_step = trained_cup[0]
    umask = os.umask(0o022)
    try:
        with torch.inference_mode():
            first = run(pack, "EchoDistillSavePersonalized", model=one_step, name="cup")["ui"]["text"]
            replaced = run(pack, "EchoDistillSavePersonalized", model=one_step, name="cup", overwrite=True)["ui"]["text"]
            kept = run(pack, "EchoDistillSavePersonalized", model=one_step, name="cup")["ui"]["text"]
    finally:
        os.umask(umask)
    loras = tmp_path / "models" / "loras"
    assert first == replaced and first[0] == f"LoRA: cup.safetensors in {loras}"
    assert first[1].startswith(f"embedding: cup.safetensors in {tmp_path / 'models' / 'embeddings'}")
    assert "embedding:cup cup" in first[1] and first[2].startswith(f"result: cup.safetensors in {comfy.results_folder()}")
    assert kept[0] == f"LoRA: cup_00001.safetensors in {loras}"
    for folder in ("loras", "embeddings", "echodistill"):
        for path in (tmp_path / "models" / folder).iterdir():
            assert path.stat().st_mode & 0o777 == 0o644, f"{path} is not readable by others"


def test_train_sends_previews_from_step_one_at_their_real_size_with_their_prompts(pack, comfy, monkeypatch):
    sent = []
    monkeypatch.setattr(comfy, "send_to_browser", lambda event, data: sent.append((event, data)))
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


def test_samplers_show_progress_stop_on_cancel_and_upscale_for_viewing(pack, comfy, trained_cup, monkeypatch):
    one_step, personal_teacher, _, _ = trained_cup
    updates = []

    class Recording(comfy.Progress):
        def update(self, step, preview=None):
            updates.append((step, self.total))
            if self.total == 6 and step == 3:
                raise comfy.Interrupted("cancelled")
    monkeypatch.setattr(comfy, "Progress", Recording)
    with torch.inference_mode():
        images, = run(pack, "EchoDistillOneStepSample", model=one_step, prompt="a <cup> cup", seed=0, batch_size=2,
                      steps=1)
        large, = run(pack, "EchoDistillOneStepSample", model=one_step, prompt="a <cup> cup", seed=0, batch_size=2,
                     steps=1, upscale=4)
        teacher_images, = run(pack, "EchoDistillTeacherSample", model=personal_teacher, prompt="a <cup> cup", seed=0,
                              batch_size=1, steps=4, cfg=3.0)
        with pytest.raises(comfy.Interrupted):
            run(pack, "EchoDistillTeacherSample", model=personal_teacher, prompt="a <cup> cup", seed=0, batch_size=1,
                steps=6, cfg=3.0)
    assert updates == [(1, 1), (1, 1), (1, 4), (2, 4), (3, 4), (4, 4), (1, 6), (2, 6), (3, 6)]
    size = images.shape[1]
    assert large.shape == (2, 4 * size, 4 * size, 3) and teacher_images.shape == (1, size, size, 3)
    assert torch.equal(large[:, ::4, ::4], images) and torch.equal(large[:, 3::4, 1::4], images)
