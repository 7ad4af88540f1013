"""A run's work is never lost: states written on any failure and wherever they can be, outputs checked
before work, no file replaced that is not the pack's own, a second Ctrl-C harmless, the user's umask."""

import os
import signal
import subprocess

import pytest
import torch
from safetensors.torch import save_file

from conftest import SIZE, concept_images, tiny_config
from echodistill_core import cli, safekeeping
from echodistill_core import trainer as trainer_module
from echodistill_core.data import ConceptDataset
from echodistill_core.serialization import ResultFileError, load_tree, save_tree
from echodistill_core.lab.tiny import tiny_model, tiny_pair
from echodistill_core.trainer import EchoDistillTrainer
from test_cli import model_folders  # noqa: F401 (a fixture: tiny diffusers folders and concept images)


@pytest.fixture
def train(model_folders, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(safekeeping, "RESCUE_FOLDERS", (tmp_path / "rescued",))

    def run(*extra: str, out=None) -> int:
        folders = ["--teacher", str(model_folders / "teacher"), "--student", str(model_folders / "student")]
        return cli.main(["train", *folders, "--images", str(model_folders / "images"), "--class-word", "toy",
                         "--preset", "tiny", "--steps", "3", "--out", str(out or tmp_path / "toy.safetensors"),
                         *extra])
    return run


def fail_at_step(monkeypatch, step: int, error: BaseException) -> None:
    original = trainer_module.EchoDistillTrainer.train_step

    def failing(trainer):
        if trainer.step + 1 == step:
            raise error
        return original(trainer)
    monkeypatch.setattr(trainer_module.EchoDistillTrainer, "train_step", failing)


@pytest.mark.parametrize("error, advice", [
    (torch.OutOfMemoryError("CUDA out of memory"), "and a smaller --memory preset"),
    (trainer_module.NonFiniteLossError("the student loss became nan"), "and lower learning rates"),
])
def test_a_failed_step_leaves_the_last_good_state_on_disk_and_says_how_to_resume(train, tmp_path, monkeypatch,
                                                                                  capsys, error, advice):
    fail_at_step(monkeypatch, 3, error)
    assert train() == 2
    state = tmp_path / "toy.state.safetensors"
    message = capsys.readouterr().err
    assert f"The state after step 2 is saved as {state}: resume with --resume {state} {advice}" in message
    assert load_tree(state)["step"] == 2 and not (tmp_path / "toy.safetensors").exists()
    monkeypatch.undo()
    monkeypatch.setattr(safekeeping, "RESCUE_FOLDERS", (tmp_path / "rescued",))
    assert train("--resume", str(state)) == 0 and load_tree(tmp_path / "toy.safetensors")["token"]


def test_save_every_keeps_a_usable_result_and_state_before_a_crash(train, tmp_path, monkeypatch):
    fail_at_step(monkeypatch, 3, RuntimeError("the machine fell over"))
    with pytest.raises(RuntimeError, match="fell over"):
        train("--save-every", "2")
    assert load_tree(tmp_path / "toy.safetensors")["config"]["steps"] == 3  # the result as of step 2
    assert load_tree(tmp_path / "toy.state.safetensors")["step"] == 2


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 KB file system (tmpfs; needs root), far too small for a training state."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_sends_the_state_to_a_rescue_folder_that_the_message_names(train, small_disk, tmp_path,
                                                                                monkeypatch, capsys):
    fail_at_step(monkeypatch, 2, KeyboardInterrupt())
    assert train(out=small_disk / "toy.safetensors") == 130
    rescued = tmp_path / "rescued" / "toy.state.safetensors"
    assert f"the state is saved as {rescued}; resume with --resume {rescued}" in capsys.readouterr().out
    assert load_tree(rescued)["step"] == 1
    assert list(small_disk.iterdir()) == []  # no partial file left behind on the full disk


def test_a_second_ctrl_c_during_the_save_cannot_break_it(train, tmp_path, monkeypatch):
    fail_at_step(monkeypatch, 2, KeyboardInterrupt())
    original = trainer_module.EchoDistillTrainer.save_state

    def pressed_again(trainer, path):
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C again while the state is written
        return original(trainer, path)
    monkeypatch.setattr(trainer_module.EchoDistillTrainer, "save_state", pressed_again)
    assert train() == 130
    assert load_tree(tmp_path / "toy.state.safetensors")["step"] == 1


def test_outputs_are_checked_before_any_work_and_other_files_never_replaced(train, tmp_path, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(cli, "_load_pair", lambda *a: started.append(True))
    notes = tmp_path / "notes.safetensors"
    notes.write_text("my notes")
    assert train(out=notes) == 2
    assert "notes.safetensors exists and is not an EchoDistill file" in capsys.readouterr().err
    assert notes.read_text() == "my notes"
    result = tmp_path / "old.safetensors"
    save_tree(result, {"config": {}})
    assert train(out=result) == 2 and "add --overwrite to replace it" in capsys.readouterr().err
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert train(out=blocked / "x.safetensors") == 2 and "cannot write in" in capsys.readouterr().err
    assert train(out=tmp_path / "result.png") == 2 and "must end in .safetensors" in capsys.readouterr().err
    same = ["--teacher", str(tmp_path), "--student", str(tmp_path)]
    assert cli.main(["train", *same, "--images", str(tmp_path), "--class-word", "toy", "--out",
                     str(tmp_path / "y.safetensors")]) == 2
    assert "is given as both teacher and student" in capsys.readouterr().err
    assert not started  # no model was loaded for any of these


def test_files_get_the_users_umask_and_abandoned_partial_files_are_removed(tmp_path):
    abandoned = tmp_path / ".x.safetensors.999999999.partial"  # a process that no longer runs
    save_file({"a": torch.zeros(1)}, abandoned)
    previous = os.umask(0o027)
    try:
        path = save_tree(tmp_path / "x.safetensors", {"a": torch.zeros(2)})
    finally:
        os.umask(previous)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o640) and not abandoned.exists()


def state_trainer(images=None, teacher_seed: int = 0, dtype=torch.float32):
    teacher, student, text = tiny_pair("v_prediction", "sample", image_size=SIZE)
    if teacher_seed:
        teacher = tiny_model("v_prediction", image_size=SIZE, seed=teacher_seed)
    for model in (teacher, student):
        model.unet.to(dtype)
    config = tiny_config(steps=2)
    concept = ConceptDataset(images or concept_images(), config.token, config.class_word, SIZE)
    return EchoDistillTrainer(teacher, student, text, concept, config)


def test_a_state_resumes_only_with_the_photos_and_models_it_was_trained_on(tmp_path):
    first = state_trainer()
    first.train(should_cancel=lambda: first.step == 1)
    path = first.save_state(tmp_path / "state.safetensors")
    state_trainer(dtype=torch.bfloat16).load_state(path)  # the same models in another precision: fine
    with pytest.raises(ValueError, match="trained on other concept images; resume with the same photos"):
        state_trainer(images=concept_images(colour=(0.1, 0.9, 0.1))).load_state(path)
    with pytest.raises(ValueError, match="trained with another teacher model"):
        state_trainer(teacher_seed=5).load_state(path)


def test_a_damaged_or_malformed_state_is_refused_naming_the_file(tmp_path):
    trainer = state_trainer()
    path = trainer.save_state(tmp_path / "state.safetensors")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # one byte of a tensor flipped, as a bad disk or copy would
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ResultFileError, match="damaged.safetensors is damaged"):
        state_trainer().load_state(damaged)
    state = trainer.state_dict()
    del state["history"]
    malformed = save_tree(tmp_path / "malformed.safetensors", state)
    with pytest.raises(ResultFileError, match="malformed.safetensors is an EchoDistill state with malformed contents"):
        state_trainer().load_state(malformed)


def test_a_caption_that_pushes_the_token_out_of_the_text_window_is_refused_before_training():
    teacher, student, text = tiny_pair("v_prediction", "sample", image_size=SIZE)  # a 16-token window
    config = tiny_config()
    captions = ["a <sks> dog", "one two three four five six seven eight nine ten eleven twelve thirteen fourteen <sks> dog",
                "a <sks> dog", "a <sks> dog"]
    concept = ConceptDataset(concept_images(), config.token, config.class_word, SIZE, captions=captions)
    with pytest.raises(ValueError, match="the token <sks> comes after the text encoder's 16-token window"):
        EchoDistillTrainer(teacher, student, text, concept, config)
    # So must every alternative of a caption that has several.
    captions = ["a <sks> dog | one two three four five six seven eight nine ten eleven twelve thirteen fourteen <sks> dog",
                "a <sks> dog", "a <sks> dog", "a <sks> dog"]
    concept = ConceptDataset(concept_images(), config.token, config.class_word, SIZE, captions=captions)
    with pytest.raises(ValueError, match="the token <sks> comes after the text encoder's 16-token window"):
        EchoDistillTrainer(teacher, student, text, concept, config)
