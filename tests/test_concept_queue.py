"""A queue of concepts: trained one after another, a finished concept never trained again, an interrupted
one resumed from its kept state; from Python and from the command line (spread over two devices too)."""

import json

import pytest
from PIL import Image

from echodistill_core import cli
from echodistill_core.concept_queue import (FINISHED, INTERRUPTED, RESUMED, STARTED, QueuedConcept, default_run,
                                            read_queue, train_queue)
from echodistill_core.loading import load_model
from echodistill_core.personalization import Personalization
from echodistill_core.serialization import load_tree
from conftest import concept_images, tiny_config
from test_cli import model_folders  # noqa: F401 (a fixture: the tiny pair as diffusers folders, and images)
from test_paper_metrics import clip, files  # noqa: F401 (fixtures: a tiny CLIP and DINOv2 in users' layouts)


def photo_folder(folder, colour):
    folder.mkdir()
    for index, image in enumerate(concept_images(3, colour)):
        Image.fromarray((image.permute(1, 2, 0) * 255).byte().numpy()).save(folder / f"{index}.png")
    return folder


@pytest.fixture
def concepts(tmp_path):
    return [QueuedConcept(photo_folder(tmp_path / "red", (0.9, 0.1, 0.1)), "<red>", "cup"),
            QueuedConcept(photo_folder(tmp_path / "blue", (0.1, 0.1, 0.9)), "<blue>", "cup")]


def test_the_queue_skips_a_finished_concept_and_resumes_an_interrupted_one(pair, concepts, tmp_path, one_thread):
    teacher, student, text = pair
    config, out = tiny_config(steps=2), tmp_path / "results"

    def stop_blue_after_one_step(trainer, result, state):  # as Ctrl-C would, the state of step 1 kept
        if trainer.concept.token == "<blue>":
            trainer.train(should_cancel=lambda: trainer.step >= 1)
            trainer.save_state(state)
            return False
        return default_run(trainer, result, state)

    first = train_queue(concepts, out, teacher, student, text, config, run=stop_blue_after_one_step)
    assert first == {"red": STARTED, "blue": INTERRUPTED}
    assert len(load_tree(out / "red.safetensors")["history"]) == 2
    assert (out / "blue.state.safetensors").is_file() and not (out / "blue.safetensors").exists()

    trained = []

    def record(trainer, result, state):
        trained.append((trainer.concept.token, trainer.step))
        return default_run(trainer, result, state)

    red_before = (out / "red.safetensors").stat().st_mtime_ns
    second = train_queue(concepts, out, teacher, student, text, config, run=record)
    assert second == {"red": FINISHED, "blue": RESUMED}
    assert trained == [("<blue>", 1)]  # red not trained again; blue went on from its first step
    assert (out / "red.safetensors").stat().st_mtime_ns == red_before
    assert [entry["step"] for entry in load_tree(out / "blue.safetensors")["history"]] == [1, 2]

    trained.clear()
    assert train_queue(concepts, out, teacher, student, text, config, run=record) == {"red": FINISHED, "blue": FINISHED}
    assert trained == []


def test_a_queue_file_names_folders_relative_to_itself(tmp_path):
    (tmp_path / "queue.json").write_text(json.dumps([{"images": "dog", "token": "<dog>", "class_word": "dog"}]))
    assert read_queue(tmp_path / "queue.json") == [QueuedConcept(tmp_path / "dog", "<dog>", "dog")]
    (tmp_path / "broken.json").write_text(json.dumps([{"images": "dog"}]))
    with pytest.raises(ValueError, match="not a concept queue"):
        read_queue(tmp_path / "broken.json")


def test_the_command_line_spreads_a_queue_over_two_devices_then_skips_what_is_done(model_folders, tmp_path, capsys):
    models = ["--teacher", str(model_folders / "teacher"), "--student", str(model_folders / "student")]
    queue = ["--concept", str(model_folders / "images"), "<a>", "toy", "--concept",
             str(photo_folder(tmp_path / "b", (0.1, 0.8, 0.1))), "<b>", "cup", "--preset", "tiny", "--steps", "1",
             "--out", str(tmp_path / "out")]
    assert cli.main(["train", *models, *queue, "--devices", "cpu", "cpu"]) == 0  # one process per device
    for name in ("images", "b"):
        assert len(load_tree(tmp_path / "out" / f"{name}.safetensors")["history"]) == 1
    capsys.readouterr()
    assert cli.main(["train", *models, *queue]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished before, not trained again") == 2


def test_the_command_line_scores_a_result_by_the_papers_protocol(model_folders, files, tmp_path, capsys):
    teacher, text = load_model(model_folders / "teacher", role="teacher")
    student, _ = load_model(model_folders / "student", role="student")
    result = Personalization.create(tiny_config(token="<heart>", class_word="toy"), teacher, student, text).save(
        tmp_path / "heart.safetensors")
    (tmp_path / "prompts.txt").write_text("a {} on the beach\n# a comment\na red {}\n")
    assert cli.main(["evaluate", "--teacher", str(model_folders / "teacher"), "--student",
                     str(model_folders / "student"), "--result", str(result), "--images", str(model_folders / "images"),
                     "--clip", str(files / "clip"), "--dino", str(files / "dinov2"), "--prompts",
                     str(tmp_path / "prompts.txt"), "--seeds", "0", "1", "--out", str(tmp_path / "scores")]) == 0
    scores = json.loads((tmp_path / "scores" / "scores.json").read_text())
    assert set(scores["figures"]["personalized"]) == set(scores["figures"]["untouched"]) == {"CLIP-I", "DINO", "CLIP-T"}
    assert "| CLIP-T |" in capsys.readouterr().out
    with Image.open(tmp_path / "scores" / "grid.png") as grid:
        assert grid.size == (5 * 128, 3 * 128)  # the photos, then two prompts: two seeds, a gap, two seeds


def test_a_queue_mixed_with_one_concepts_options_is_refused(tmp_path, capsys):
    assert cli.main(["train", "--teacher", "teacher", "--student", "student", "--concept", str(tmp_path), "<a>", "toy",
                     "--images", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "either one concept" in capsys.readouterr().err
