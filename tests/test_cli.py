"""The command line: help, the demo end to end, train, interrupt and resume, sample."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from echodistill_core import cli
from echodistill_core.lab.demo import demo_concept_images
from echodistill_core.loading import save_diffusers_folder
from echodistill_core.serialization import load_tree
from echodistill_core.lab.tiny import tiny_pair, tiny_scheduler

ROOT = Path(__file__).resolve().parents[1]


def test_help_explains_every_command(capsys):
    result = subprocess.run([sys.executable, "-m", "echodistill_core", "--help"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0 and "train" in result.stdout and "demo" in result.stdout
    for command in ("sample", "demo", "train"):
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"])
        assert exit_.value.code == 0
    assert "--class-word" in capsys.readouterr().out  # train's options, each with its help


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--steps", "3"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["steps"] == 3 and report["seconds"] > 0
    for name in ("concept", "student", "teacher", "result", "student evaluated", "teacher evaluated",
                 "untouched student"):
        assert Path(report["files"][name]).is_file()
    for role in ("student", "teacher"):
        assert set(report[role]) == {"calibrated_fidelity", "recognition", "recognition_context_only",
                                     "recognition_concept_changed", "recognition_shape", "concept_score",
                                     "concept_fidelity", "concept_silhouette", "prompt_fidelity", "kept_accuracy",
                                     "kept_fd"}
        assert all(0 <= report[role][key] <= 1 for key in ("concept_fidelity", "prompt_fidelity", "kept_accuracy",
                                                            "recognition", "recognition_context_only",
                                                            "recognition_concept_changed"))
        # The demo's six prompts are half new backgrounds, half a size too: recognition is the halves' mean.
        halves = (report[role]["recognition_context_only"] + report[role]["recognition_concept_changed"]) / 2
        assert report[role]["recognition"] == pytest.approx(halves)
        assert abs(report[role]["calibrated_fidelity"]) < 0.5  # three steps: about the untouched model
    assert "report:" in capsys.readouterr().out


@pytest.fixture
def model_folders(tmp_path):
    teacher, student, text = tiny_pair("v_prediction", "sample", image_size=16)
    save_diffusers_folder(tmp_path / "teacher", teacher, text, tiny_scheduler("v_prediction"))
    save_diffusers_folder(tmp_path / "student", student, text, tiny_scheduler("sample", one_step=True))
    images = tmp_path / "images"
    images.mkdir()
    for index, image in enumerate(demo_concept_images(24, count=3)):
        Image.fromarray((image.permute(1, 2, 0) * 255).byte().numpy()).save(images / f"{index}.png")
    return tmp_path


def test_train_then_sample(model_folders, tmp_path, capsys):
    folders = ["--teacher", str(model_folders / "teacher"), "--student", str(model_folders / "student")]
    out = tmp_path / "toy.safetensors"
    assert cli.main(["train", *folders, "--images", str(model_folders / "images"), "--class-word", "toy",
                     "--preset", "tiny", "--memory", "8 GB", "--steps", "2", "--out", str(out)]) == 0
    summary = capsys.readouterr().out  # what the run computes, before it starts
    assert "discriminators: the base teacher's features" in summary and "feature x1 on the base teacher" in summary
    config = load_tree(out)["config"]
    assert (config["batch_size"], config["offload"], config["vae_decode"]) == (1, True, "tiled")
    grid = tmp_path / "grid.png"
    assert cli.main(["sample", *folders, "--result", str(out), "--prompt", "a photo of a <sks> toy",
                     "--prompt", "a <sks> toy in the snow", "--out", str(grid)]) == 0
    assert Image.open(grid).size == (32, 16)


def test_interrupt_saves_a_state_that_resumes(model_folders, tmp_path, monkeypatch):
    folders = ["--teacher", str(model_folders / "teacher"), "--student", str(model_folders / "student")]
    common = ["train", *folders, "--images", str(model_folders / "images"), "--class-word", "toy", "--preset", "tiny",
              "--steps", "3", "--out", str(tmp_path / "toy.safetensors")]
    original = cli.EchoDistillTrainer.train_step

    def interrupt_at_step_two(trainer):
        if trainer.step == 1:
            raise KeyboardInterrupt
        return original(trainer)

    monkeypatch.setattr(cli.EchoDistillTrainer, "train_step", interrupt_at_step_two)
    assert cli.main(common) == 130
    state = tmp_path / "toy.state.safetensors"
    assert state.is_file() and not (tmp_path / "toy.safetensors").exists()
    monkeypatch.setattr(cli.EchoDistillTrainer, "train_step", original)
    assert cli.main([*common, "--resume", str(state)]) == 0
    assert (tmp_path / "toy.safetensors").is_file()


def test_image_networks_a_choice_lacks_are_named_before_any_model_loads(tmp_path, capsys):
    nowhere = ["--teacher", str(tmp_path / "no-teacher"), "--student", str(tmp_path / "no-student")]
    assert cli.main(["train", *nowhere, "--images", str(tmp_path), "--class-word", "toy", "--out",
                     str(tmp_path / "x.safetensors"), "--discriminators", "paper", "--feature-network",
                     "ip-adapter"]) == 2
    assert "the paper discriminator set needs the dino and dinov2 and clip_vision files" in capsys.readouterr().err


def test_bad_inputs_end_with_a_message_not_a_traceback(model_folders, tmp_path, capsys):
    folders = ["--teacher", str(tmp_path / "nowhere"), "--student", str(model_folders / "student")]
    assert cli.main(["train", *folders, "--images", str(model_folders / "images"), "--class-word", "toy",
                     "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (model_folders / "images" / "broken.png").write_bytes(b"not an image")
    folders = ["--teacher", str(model_folders / "teacher"), "--student", str(model_folders / "student")]
    assert cli.main(["train", *folders, "--images", str(model_folders / "images"), "--class-word", "toy",
                     "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "broken.png is not a readable image" in capsys.readouterr().err
