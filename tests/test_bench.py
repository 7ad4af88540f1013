"""The benchmarks run end to end on a reduced budget and end with the JSON line they promise."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(name: str, *arguments: str) -> tuple[dict, str]:
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(ROOT / "bench" / name), *arguments], capture_output=True,
                            text=True, timeout=600, check=True, env=environment)
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1])


def test_the_speed_benchmark_says_where_an_iteration_goes():
    figures, printed = run_bench("speed.py", "--repeats", "1")
    steps = {"1 teacher step", "2 student sample", "3 teacher target", "4 student step", "5 discriminators"}
    assert steps <= set(figures["phases_vs_teacher_step"])
    assert steps | {"echo samples"} <= set(figures["echo_phases_vs_teacher_step"])
    assert "echo samples" not in figures["phases_vs_teacher_step"]  # no echo before the echo stage
    # The phases share out the measured iteration: they add up to its ratio (echo samples sit inside step 1).
    before = sum(figures["phases_vs_teacher_step"].values())
    assert before == pytest.approx(figures["iteration_vs_teacher_step_before_echo"], rel=0.02)
    echo = figures["echo_phases_vs_teacher_step"]
    assert sum(echo.values()) - echo["echo samples"] == pytest.approx(
        figures["iteration_vs_teacher_step_in_echo"], rel=0.02)
    assert figures["one_step_speedup_vs_25_steps"] > 1 and "where an iteration goes" in printed


def test_the_quality_benchmark_averages_its_seeds():
    figures, printed = run_bench("quality.py", "--steps", "2", "--seeds", "0", "1", "--methods", "textual_inversion",
                                 "echodistill", "--seeds-per-prompt", "1", "--plain", "4", "--threads", "1")
    assert figures["seeds"] == [0, 1] and set(figures["methods"]) == {"textual_inversion", "echodistill"}
    assert set(figures["teacher"]) == {"echodistill"}  # the 25-step teacher only where it trained
    for method, runs in figures["per_seed"].items():
        assert len(runs) == 2 and runs[0]["student"] != runs[1]["student"]  # the seeds really differ
        for metric in ("concept_fidelity", "prompt_fidelity", "kept_accuracy", "kept_fd"):
            values = [run["student"][metric] for run in runs]
            assert figures["methods"][method][metric] == pytest.approx(sum(values) / 2)
            assert figures["methods"][method][f"{metric}_sd"] == pytest.approx(abs(values[0] - values[1]) / 2)
    assert "| echodistill teacher, 25 steps |" in printed and " ± " in printed


def test_the_memory_benchmark_measures_the_papers_image_networks():
    figures, printed = run_bench("memory.py", "--presets", "24 GB", "--networks", "paper", "--tiny",
                                 "--resolution", "64")
    result = figures["presets"]["24 GB"]
    assert "error" not in result, result["error"]
    setup = result["setup"]
    assert setup["tiny"] and setup["networks"]["choice"] == "paper"
    discriminators = [name.split(" at ")[0] for name in setup["networks"]["discriminators"]]
    assert discriminators == ["DINO ViT-S/16", "DINOv2 ViT-L/14", "CLIP ViT-H/14"]
    assert "IP-Adapter tokens of CLIP ViT-H/14" in setup["networks"]["feature"]
    # Their weights are frozen weights, counted in bf16 and also given apart.
    assert 0 < setup["image_networks_gb"] < setup["frozen_gb"]
    assert set(result["phases"]) == {"teacher", "student", "discriminators"}
    assert "losses" in setup and "feature" in setup["losses"] and "paper networks" in printed
