"""Results on disk: safetensors only, atomic, and loaded back with identical outputs."""

import errno

import pytest
import torch
from safetensors.torch import save_file

from conftest import SIZE, make_concept, tiny_config
from echodistill_core import serialization
from echodistill_core.personalization import Personalization
from echodistill_core.sampling import generate_student, generate_teacher
from echodistill_core.serialization import ResultFileError
from echodistill_core.lab.tiny import tiny_pair
from echodistill_core.trainer import EchoDistillTrainer

PROMPTS, SEEDS = ["a photo of a <sks> dog", "a <sks> dog in the snow"], [0, 1]


@pytest.mark.parametrize("parameterisation", ["custom_diffusion", "lora"])
def test_a_saved_result_loads_back_with_identical_outputs(tmp_path, parameterisation):
    teacher, student, text = tiny_pair("v_prediction", "sample", image_size=SIZE)
    config = tiny_config(steps=2, parameterisation=parameterisation)
    trainer = EchoDistillTrainer(teacher, student, text, make_concept(config), config)
    trainer.train()
    with trainer.applied():
        expected_student = generate_student(student, text, PROMPTS, SEEDS)
        expected_teacher = generate_teacher(teacher, text, PROMPTS, SEEDS, steps=3)
    path = trainer.personalization.save(tmp_path / "dog.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["dog.safetensors"]  # no temporary file left

    fresh_teacher, fresh_student, fresh_text = tiny_pair("v_prediction", "sample", image_size=SIZE)
    loaded = Personalization.load(path, fresh_teacher, fresh_student, fresh_text)
    with loaded.applied(fresh_text, fresh_teacher, fresh_student):
        assert torch.equal(generate_student(fresh_student, fresh_text, PROMPTS, SEEDS), expected_student)
        assert torch.equal(generate_teacher(fresh_teacher, fresh_text, PROMPTS, SEEDS, steps=3), expected_teacher)
    assert loaded.config == config and loaded.history == trainer.history


def test_a_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "result.safetensors"
    serialization.save_tree(target, {"value": torch.ones(2)})

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as file:
            file.write(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(serialization, "save_file", disk_full)
    with pytest.raises(OSError, match="free some disk space.*Nothing was overwritten"):
        serialization.save_tree(target, {"value": torch.zeros(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["result.safetensors"]
    assert torch.equal(serialization.load_tree(target)["value"], torch.ones(2))


def test_trees_keep_their_structure_and_key_types(tmp_path):
    tree = {"state": {0: {"step": torch.tensor(3.0)}, 1: {}}, "groups": [{"betas": (0.9, 0.999), "lr": 1e-3}],
            "name": "x", "missing": None}
    loaded = serialization.load_tree(serialization.save_tree(tmp_path / "tree.safetensors", tree))
    assert list(loaded["state"]) == [0, 1] and loaded["state"][0]["step"].item() == 3.0
    assert loaded["groups"][0]["betas"] == [0.9, 0.999] and loaded["name"] == "x" and loaded["missing"] is None


@pytest.mark.parametrize("content, message", [
    (b"\x80\x04\x95pickled data", "corrupt or truncated"),
    (b"", "corrupt or truncated"),
])
def test_corrupt_files_are_refused_by_name(tmp_path, content, message):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(ResultFileError, match=message) as error:
        serialization.load_tree(path)
    assert "broken.safetensors" in str(error.value)


def test_a_truncated_result_is_refused(tmp_path):
    path = serialization.save_tree(tmp_path / "whole.safetensors", {"value": torch.ones(1000)})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ResultFileError, match="corrupt or truncated"):
        serialization.load_tree(path)


def test_pickles_and_foreign_safetensors_are_refused(tmp_path):
    pickle = tmp_path / "model.ckpt"
    torch.save({"a": torch.ones(1)}, pickle)
    with pytest.raises(ResultFileError, match="only reads safetensors"):
        serialization.load_tree(pickle)
    foreign = tmp_path / "lora.safetensors"
    save_file({"a": torch.ones(1)}, str(foreign))
    with pytest.raises(ResultFileError, match="not one EchoDistill wrote"):
        serialization.load_tree(foreign)


def test_a_result_does_not_load_onto_other_base_models(tmp_path):
    teacher, student, text = tiny_pair("v_prediction", "sample", image_size=SIZE)
    config = tiny_config(steps=1)
    trainer = EchoDistillTrainer(teacher, student, text, make_concept(config), config)
    path = trainer.personalization.save(tmp_path / "dog.safetensors")
    other = tiny_pair("v_prediction", "sample", image_size=SIZE)
    other[0].unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k = torch.nn.Linear(32, 16, bias=False)
    with pytest.raises(ResultFileError, match="other base models"):
        Personalization.load(path, *other)
