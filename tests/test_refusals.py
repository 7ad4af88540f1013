"""Bad input, as a careless or hostile user gives it, through the command line: every case ends with
a message that says what to do (exit 2, no traceback), and no file in the user's folders is created,
changed or removed. Then the same promise for the loaded models: a token tried, a run failed or a run
cancelled leaves the tokenizer, the text encoder and both UNets exactly as they were."""

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import concept_images, save_png, save_user_models, tiny_config
from echodistill_core import cli, safekeeping
from echodistill_core import trainer as trainer_module
from echodistill_core.data import ConceptDataset
from echodistill_core.lab.demo import demo_concept_images
from echodistill_core.personalization import Personalization
from echodistill_core.lab.tiny import tiny_pair
from echodistill_core.trainer import EchoDistillTrainer


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A user's folder: a teacher/student pair, one from another family's text encoder, photos, a
    finished result and the state of an interrupted run, and files of their own."""
    home = tmp_path_factory.mktemp("home")
    save_user_models(home)
    for name, images in (("photos", demo_concept_images(24, count=3)), ("other-photos", concept_images(3))):
        (home / name).mkdir()
        for index, image in enumerate(images):
            save_png(image, home / name / f"{index}.png")
    (home / "empty").mkdir()
    (home / "broken").mkdir()
    shutil.copy(home / "photos" / "0.png", home / "broken" / "0.png")
    (home / "broken" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (home / "notes.safetensors").write_text("my notes")
    (home / "notes.png").write_text("my notes")
    (home / "garbage.safetensors").write_bytes(os.urandom(4096))
    (home / "folder.safetensors").mkdir()
    assert cli.main(["train", *pair(home), "--images", str(home / "photos"), "--class-word", "toy", "--preset",
                     "tiny", "--steps", "1", "--out", str(home / "result.safetensors")]) == 0
    original = trainer_module.EchoDistillTrainer.train_step
    trainer_module.EchoDistillTrainer.train_step = _interrupt
    try:
        assert cli.main(["train", *pair(home), "--images", str(home / "photos"), "--class-word", "toy", "--preset",
                         "tiny", "--steps", "3", "--out", str(home / "interrupted.safetensors")]) == 130
    finally:
        trainer_module.EchoDistillTrainer.train_step = original
    return home


def _interrupt(trainer):
    raise KeyboardInterrupt


def pair(home: Path, teacher: str = "teacher", student: str = "student") -> list[str]:
    return ["--teacher", str(home / teacher), "--student", str(home / student)]


def train(home: Path, *changes: str, teacher="teacher", student="student", images="photos",
          out="new.safetensors") -> list[str]:
    """A `train` command that would run, with `changes` appended (argparse keeps the last of an option)."""
    return ["train", *pair(home, teacher, student), "--images", str(home / images), "--class-word", "toy",
            "--preset", "tiny", "--steps", "2", "--out", str(home / out), *changes]


def sample(home: Path, *changes: str, result="result.safetensors", out="grid.png") -> list[str]:
    return ["sample", *pair(home), "--result", str(home / result), "--prompt", "a photo of a <sks> toy",
            "--out", str(home / out), *changes]


# (case, command, what the message must say)
CASES = [
    # models: missing, corrupt, pickled, in the wrong role, mismatched
    ("teacher missing", lambda h: train(h, teacher="nowhere"), "nowhere does not exist"),
    ("teacher is garbage", lambda h: train(h, teacher="garbage.safetensors"), "garbage.safetensors"),
    ("teacher is a user's text", lambda h: train(h, teacher="notes.safetensors"), "notes.safetensors"),
    ("student is multi-step", lambda h: train(h, student="teacher", teacher="multi-step"),
     "teacher is a multi-step model.*choose a one-step model such as SD-Turbo as the student"),
    ("teacher and student swapped", lambda h: train(h, teacher="student", student="teacher"),
     "multi-step model.*use teacher as the teacher"),
    ("one folder as both", lambda h: train(h, teacher="student"), "given as both teacher and student"),
    ("the same weights as both", lambda h: train(h, teacher="multi-step"),
     "are the same model .their UNet weights are equal"),
    ("student of another text encoder", lambda h: train(h, student="foreign-student"),
     "student was trained with another text encoder than the teacher's"),
    # photos
    ("no photos folder", lambda h: train(h, images="nowhere"), "nowhere is not a folder of images"),
    ("empty photos folder", lambda h: train(h, images="empty"), "no concept images were given"),
    ("a broken photo", lambda h: train(h, images="broken"), "1.png is not a readable image.*remove or re-save it"),
    # words
    ("token with a space", lambda h: train(h, "--token", "my toy"), "must be one word without spaces"),
    ("token the model knows", lambda h: train(h, "--token", "photo"), "already a word the text encoder knows"),
    ("class word is the token", lambda h: train(h, "--class-word", "<sks>"), "class word '<sks>' contains the "
     "placeholder token"),
    ("empty class word", lambda h: train(h, "--class-word", " "), "class word is empty"),
    # numbers
    ("negative learning rate", lambda h: train(h, "--teacher-lr=-1e-4"), "teacher_lr must be positive"),
    ("infinite learning rate", lambda h: train(h, "--student-lr", "inf"), "student_lr must be positive"),
    ("rank 0", lambda h: train(h, "--lora-rank", "0"), "lora_rank must be at least 1"),
    ("negative resolution", lambda h: train(h, "--resolution=-16"), "resolution must be 0 .the student's size."),
    ("no steps", lambda h: train(h, "--steps", "0"), "steps must be at least 1"),
    ("negative seed", lambda h: train(h, "--seed=-1"), "seed must be a whole number from 0"),
    ("negative guidance", lambda h: train(h, "--guidance-scale=-2"), "guidance_scale must be 0 or more"),
    ("echo after the end", lambda h: train(h, "--echo-start", "1.5"), "echo_start must be a fraction"),
    ("negative save-every", lambda h: train(h, "--save-every=-5"), "is negative; give 0 .never."),
    # where the result goes
    ("out is a user's file", lambda h: train(h, out="notes.safetensors"), "notes.safetensors exists and is not an "
     "EchoDistill file"),
    ("out is an existing result", lambda h: train(h, out="result.safetensors"), "result.safetensors exists; choose "
     "another name, or add --overwrite"),
    ("out is a folder", lambda h: train(h, out="folder.safetensors"), "is a folder; give a file name"),
    ("out is not safetensors", lambda h: train(h, out="result.ckpt"), "must end in .safetensors"),
    ("out under a file", lambda h: train(h, out="notes.png/result.safetensors"), "cannot write in .*notes.png"),
    # resuming
    ("resume from garbage", lambda h: train(h, "--resume", str(h / "garbage.safetensors")),
     "is not an EchoDistill training state"),
    ("resume from nothing", lambda h: train(h, "--resume", str(h / "nowhere.safetensors")),
     "is not an EchoDistill training state"),
    ("resume with other photos", lambda h: train(h, "--resume", str(h / "interrupted.state.safetensors"),
                                                 images="other-photos", out="interrupted.safetensors"),
     "trained on other concept images"),
    ("resume with other settings", lambda h: train(h, "--resume", str(h / "interrupted.state.safetensors"),
                                                   "--teacher-lr", "1e-3", out="interrupted.safetensors"),
     "trained with other settings"),
    # sampling
    ("sample steps negative", lambda h: sample(h, "--sample-steps=-1"), "not a number of sampling steps"),
    ("sample seed negative", lambda h: sample(h, "--seed=-3"), "is not a seed"),
    ("sample seed not a number", lambda h: sample(h, "--seed", "abc"), "'abc' is not a whole number"),
    ("sample result missing", lambda h: sample(h, result="nowhere.safetensors"), "nowhere.safetensors does not exist"),
    ("sample result is garbage", lambda h: sample(h, result="garbage.safetensors"), "is not an EchoDistill result"),
    ("sample out is a user's file", lambda h: sample(h, out="notes.png"), "notes.png exists and is not a PNG image"),
    ("sample out is not png", lambda h: sample(h, out="grid.jpg"), "must end in .png"),
]


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`, with its contents' digest."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            for path in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case, command, message", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_refused_with_advice_and_nothing_changes(home, case, command, message, capsys, monkeypatch,
                                                              tmp_path):
    monkeypatch.setattr(safekeeping, "RESCUE_FOLDERS", (tmp_path / "rescued",))
    before = fingerprint(home)
    try:
        code = cli.main(command(home))
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    printed = capsys.readouterr()
    assert code == 2, f"{case}: exit {code}\n{printed.err}"
    assert "Traceback" not in printed.err + printed.out
    assert any(__import__("re").search(message, line) for line in printed.err.splitlines()), printed.err
    assert fingerprint(home) == before
    assert not (tmp_path / "rescued").exists()


# ------------------------------------------------------------------- nothing leaks between runs


def model_state(teacher, student, text) -> dict:
    """All a later run could see of the loaded models."""
    tokenizer = text.tokenizer
    return {
        "tokenizer": (len(tokenizer), dict(tokenizer.get_added_vocab()), tokenizer("a photo of a <sks> toy").input_ids),
        "embedding table": type(text.text_encoder.get_input_embeddings()).__name__,
        "modules": [type(module).__name__ for model in (teacher.unet, student.unet, text.text_encoder)
                    for module in model.modules()],
        "weights": {f"{name}.{key}": value.clone() for name, model in
                    (("teacher", teacher.unet), ("student", student.unet), ("text", text.text_encoder))
                    for key, value in model.state_dict().items()},
        "trainable": [p.requires_grad for m in (teacher.unet, student.unet, text.text_encoder) for p in m.parameters()],
        "checkpointing": [teacher.unet.is_gradient_checkpointing, student.unet.is_gradient_checkpointing],
    }


def assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key in before:
        if key == "weights":
            assert before[key].keys() == after[key].keys()
            changed = [name for name in before[key] if not torch.equal(before[key][name], after[key][name])]
            assert not changed, f"weights changed: {changed[:5]}"
        else:
            assert before[key] == after[key], key


@pytest.fixture
def models():
    teacher, student, text = tiny_pair("v_prediction", "sample", image_size=16)
    return teacher, student, text


def trainer_for(models, **changes) -> EchoDistillTrainer:
    teacher, student, text = models
    config = tiny_config(steps=3, **changes)
    concept = ConceptDataset(concept_images(), config.token, config.class_word, 16)
    return EchoDistillTrainer(teacher, student, text, concept, config)


def test_a_token_tried_and_refused_leaves_the_tokenizer_as_it_was(models):
    before = model_state(*models)
    for token, word in (("<sks>", "<sks>"), ("photo", "dog"), ("<sks>", "dog <sks>")):
        with pytest.raises(ValueError):
            Personalization.create(tiny_config(token=token, class_word=word), *models)
    assert_same(before, model_state(*models))
    Personalization.create(tiny_config(), *models)  # the workflow as it was runs again
    assert_same(before, model_state(*models))


def test_a_finished_run_leaves_the_base_models_as_they_were(models):
    before = model_state(*models)
    trainer = trainer_for(models, gradient_checkpointing=True)
    trainer.train()
    assert_same(before, model_state(*models))
    with trainer.applied():  # the token lives in the result, not in the shared tokenizer
        assert models[2].tokenizer("a <sks> toy").input_ids != before["tokenizer"][2]


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), RuntimeError("a loss failed"),
                                     trainer_module.NonFiniteLossError("nan")])
def test_a_failed_or_cancelled_run_leaves_the_base_models_as_they_were(models, monkeypatch, failure):
    before = model_state(*models)
    trainer = trainer_for(models, gradient_checkpointing=True)
    original = EchoDistillTrainer.train_step

    def failing_at_step_two(self):
        if self.step == 1:
            raise failure
        return original(self)

    monkeypatch.setattr(EchoDistillTrainer, "train_step", failing_at_step_two)
    with pytest.raises(type(failure)):
        trainer.train()
    assert_same(before, model_state(*models))
