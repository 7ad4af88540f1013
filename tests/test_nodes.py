"""The nodes' contract, without ComfyUI: declarations, and the whole graph run inside inference mode."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
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


def run(pack, node_id, **inputs):
    node = pack.NODE_CLASS_MAPPINGS[node_id]()
    return getattr(node, node.FUNCTION)(**inputs)


def bundled_pair(pack):
    teacher, = run(pack, "EchoDistillLoadTeacher", model="tiny teacher (bundled)", family="auto-detect", precision="auto")
    student, = run(pack, "EchoDistillLoadStudent", model="tiny one-step student (bundled)", precision="auto",
                   family="auto-detect")
    return teacher, student


def test_the_whole_graph_runs_inside_inference_mode(pack, comfy, tmp_path):
    with torch.inference_mode():  # as ComfyUI runs every prompt
        teacher, student = bundled_pair(pack)
        photos = torch.rand(3, 40, 40, 3)  # IMAGE batches: [B, H, W, 3] in 0..1, inference tensors
        concept, = run(pack, "EchoDistillConceptImages", images=photos[:2], token="<toy>", class_word="toy",
                       initializer_word="")
        concept, = run(pack, "EchoDistillConceptImages", images=torch.rand(1, 24, 32, 3), token="<toy>",
                       class_word="toy", initializer_word="", add_to=concept)
        assert len(concept.images) == 3
        one_step, personal_teacher, plot = run(pack, "EchoDistillTrain", teacher=teacher, student=student,
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
            assert all(key.startswith("lora_unet_") and key.endswith(".diff") for key in file.keys())

        result = pack.NODE_CLASS_MAPPINGS["EchoDistillLoadPersonalized"].INPUT_TYPES()["required"]["result"][0]
        assert result == ["my toy.safetensors", "my toy_00001.safetensors"]
        loaded, _ = run(pack, "EchoDistillLoadPersonalized", teacher=teacher, student=student,
                        result="my toy.safetensors")
        again_images, = run(pack, "EchoDistillOneStepSample", model=loaded, prompt="a photo of a <toy> toy",
                            seed=3, batch_size=2, steps=1)
        assert torch.equal(again_images, images)


def test_bad_names_and_prompts_get_clear_errors(pack, comfy):
    with pytest.raises(ValueError, match="plain file name"):
        comfy.safe_file_name("../../etc/passwd")
    with torch.inference_mode():
        teacher, student = bundled_pair(pack)
        concept, = run(pack, "EchoDistillConceptImages", images=torch.rand(2, 32, 32, 3), token="<cup>",
                       class_word="cup", initializer_word="")
        one_step, _, _ = run(pack, "EchoDistillTrain", teacher=teacher, student=student, concept=concept,
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
        straight, _, _ = run(pack, "EchoDistillTrain", **settings)

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
        resumed, _, _ = run(pack, "EchoDistillTrain", **settings, resume_state=states[1])
    for key, value in straight.personalization.student_adapters.state_dict().items():
        torch.testing.assert_close(resumed.personalization.student_adapters.state_dict()[key], value)
    torch.testing.assert_close(resumed.personalization.token.vector, straight.personalization.token.vector)
