"""The benchmarks run end to end on a reduced budget and end with the JSON line they promise."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from echodistill_core.backbones import TEACHER_FEATURES

ROOT = Path(__file__).resolve().parents[1]


def run_bench(name: str, *arguments: str) -> tuple[dict, str]:
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(ROOT / "bench" / name), *arguments], capture_output=True,
                            text=True, timeout=600, check=True, env=environment)
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1])


def test_the_speed_benchmark_says_where_an_iteration_goes_in_pixel_and_latent_space():
    figures, printed = run_bench("speed.py", "--repeats", "1", "--latent-size", "64")
    steps = {"1 teacher step", "2 student sample", "3 teacher target", "4 student step", "5 discriminators"}
    for prefix in ("", "latent_"):
        phases, echo = figures[f"{prefix}phases_vs_teacher_step"], figures[f"{prefix}echo_phases_vs_teacher_step"]
        assert steps <= set(phases) and steps | {"echo samples"} <= set(echo)
        assert phases.get("echo samples", 0) == 0  # no echo before the echo stage
        # The phases share out the measured iteration: they add up to its ratio (no phase runs inside another).
        assert sum(phases.values()) == pytest.approx(figures[f"{prefix}iteration_vs_teacher_step_before_echo"], rel=0.02)
        assert sum(echo.values()) == pytest.approx(figures[f"{prefix}iteration_vs_teacher_step_in_echo"], rel=0.02)
        for key in ("iteration_vs_teacher_step_before_echo", "iteration_vs_teacher_step_in_echo",
                    "one_step_speedup_vs_25_steps", "one_step_sampler_overhead", "sampler_overhead"):
            assert figures[f"{prefix}{key}_spread"] >= 0  # one round: no spread, but reported
        assert figures[f"{prefix}one_step_speedup_vs_25_steps"] > 1
    # Only the latent pair decodes and encodes: its encode phase takes time, the pixel pair's does not.
    assert figures["latent_setup"]["vae_parameters"] > 0 and not figures["setup"]["vae_parameters"]
    assert figures["latent_phases_vs_teacher_step"]["encode"] > 0.01 > figures["phases_vs_teacher_step"]["encode"]
    assert figures["threads"] == 1 and "where an iteration goes" in printed and "[latent]" in printed
    assert figures["setup"]["networks"] == {"discriminators": [TEACHER_FEATURES], "feature": TEACHER_FEATURES}


def test_the_speed_benchmark_times_the_pixel_pair_with_the_networks_the_bundled_pair_trains_with():
    figures, _ = run_bench("speed.py", "--repeats", "1", "--pairs", "pixel", "--pixel-networks", "bundled")
    networks = figures["setup"]["networks"]
    assert networks["discriminators"][0] == TEACHER_FEATURES and "DINO" in networks["discriminators"][1]
    assert "DINO" in networks["feature"] and not any(key.startswith("latent_") for key in figures)
    assert figures["phases_vs_teacher_step"]["5 discriminators"] > 0


def test_the_flop_benchmark_counts_sd21_and_sd_turbo_per_phase():
    figures, printed = run_bench("flops.py")
    sd = figures["sd21_turbo_512"]
    # The unit is the teacher's own step; the phases share out the iteration exactly (FLOPs are counted).
    phases = sd["phases_vs_teacher_step"]
    assert phases["encode"] + phases["1 teacher step"] == pytest.approx(1, abs=0.002)
    assert sum(phases.values()) == pytest.approx(sd["iteration_vs_teacher_step"], abs=0.01)
    echo = sd["echo_phases_vs_teacher_step"]
    assert sum(echo.values()) == pytest.approx(sd["echo_iteration_vs_teacher_step"], abs=0.01)
    assert sd["echo_iteration_vs_teacher_step"] > sd["iteration_vs_teacher_step"] > 2
    # At full size one SD VAE decoder pass over the batch of two is 5.03 TFLOPs: the student's sample decoded
    # with gradient (forward and backward) and the teacher's target decoded are three passes.
    decoder = sd["networks_vs_teacher_step"]["vae decoder"] * sd["teacher_step_tflops"]
    assert decoder == pytest.approx(3 * 5.03, rel=0.03)
    # The host waits for the device once a step, for all the losses at once (their finiteness checked on
    # the host), in the echo stage too: the ranking that picks the echoed samples stays on the device.
    waits, echo_waits = sd["host_waits_per_iteration"], sd["echo_host_waits_per_iteration"]
    assert (waits["values_read"], waits["copies_to_host"]) == (0, 1)
    assert (echo_waits["values_read"], echo_waits["copies_to_host"]) == (0, 1)
    # Every pass the iteration makes is one the method needs: counted alone, they and the teacher's own step
    # leave less than 0.1 teacher steps (the text encoder, the losses, the updates) to the rest.
    assert sd["method_floor_vs_teacher_step"] <= sd["iteration_vs_teacher_step"] < sd["method_floor_vs_teacher_step"] + 0.1
    if "cheap_colour_iteration_vs_teacher_step" in sd:
        assert sd["cheap_colour_iteration_vs_teacher_step"] < sd["iteration_vs_teacher_step"]
    assert "per phase" in printed


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


def test_the_quality_benchmark_judges_a_concept_with_a_look_by_a_single_method(tmp_path):
    """A world concept of a known kind with its own look, one method: the student and the teacher it trained
    both carry calibrated fidelity and recognition, numbers (none NaN), and their grids are written."""
    import math

    figures, printed = run_bench("quality.py", "--concepts", "circle/red/halves/blue", "--methods", "teacher_only",
                                 "--steps", "2", "--seeds-per-prompt", "1", "--plain", "4", "--threads", "1",
                                 "--out", str(tmp_path))
    for model in (figures["methods"]["teacher_only"], figures["teacher"]["teacher_only"]):
        for metric in ("calibrated_fidelity", "recognition", "recognition_shape", "prompt_fidelity", "kept_accuracy"):
            assert not math.isnan(model[metric]), (metric, model)
    assert "nan" not in printed.lower()
    grids = figures["grids"]["circle/red/halves/blue"]
    assert {"concept", "untouched student", "untouched teacher", "teacher_only_seed0 student",
            "teacher_only_seed0 teacher"} <= set(grids)
    assert all(Path(path).is_file() for path in grids.values())


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


def test_the_meta_device_memory_estimate_agrees_with_the_measurement():
    """bench/memory.py --estimate counts the live device storages of the same iteration on the meta device,
    in the preset's dtype. Its teacher and discriminator phases agree with the measured figures (README,
    "Memory": 12 GB preset 5.92 and 5.43 GB, 24 GB 7.42 and 5.43 GB); its student phase is higher by about
    1.2 GB: the colour loss holds 1.3 GB at that peak (fp32 projections, their int64 sort indices), which the
    fp32 measurement counted at half, as if it were bf16."""
    figures, printed = run_bench("memory.py", "--estimate", "--presets", "12 GB,24 GB")
    measured = {"12 GB": (5.92, 8.56, 5.43), "24 GB": (7.42, 9.66, 5.43)}
    for name, (teacher, student, discriminators) in measured.items():
        result = figures["presets"][name]
        assert result["setup"]["dtype"] == "bfloat16"
        assert result["setup"]["frozen_gb"] == pytest.approx(4.02, abs=0.01)  # SD 2.1 + SD-Turbo + VAE + OpenCLIP-H
        phases = result["phases"]
        assert phases["teacher"]["peak_gb"] == pytest.approx(teacher, abs=0.15)
        assert phases["discriminators"]["peak_gb"] == pytest.approx(discriminators, abs=0.15)
        assert student < phases["student"]["peak_gb"] < student + 1.5
        assert result["peak_gb"] == max(phase["peak_gb"] for phase in phases.values())
    # UNet checkpointing (12 GB) holds less than keeping the activations (24 GB).
    assert figures["presets"]["12 GB"]["peak_gb"] < figures["presets"]["24 GB"]["peak_gb"]
    assert "meta-device estimate" in printed


def test_the_quality_benchmark_merges_runs_made_apart(tmp_path):
    """Seeds run in parallel, one results.json each, give the table and JSON line one run of all seeds gives."""
    def run(fidelity):
        return {"seconds": 2.0, "student": {"calibrated_fidelity": fidelity, "recognition": fidelity / 2}}

    def matrix(diagonal, concepts):  # a run's cross-concept matrix: rows sampled, columns scored against
        cells = {row: {column: diagonal if row == column else -diagonal for column in concepts} for row in concepts}
        return {"echodistill": {"score": cells, "calibrated": cells}}

    for seed, fidelity, concepts in ((0, 0.2, ("circle", "square", "ring")), (1, 0.4, ("circle", "square"))):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps({
            "steps": 60, "seeds": [seed], "changes": [], "per_seed": {"echodistill": [run(fidelity)]},
            "grids": {"circle/red/halves/blue": {f"echodistill_seed{seed} student": "grid.png"}},
            "cross_concept": matrix(fidelity, concepts)}))
    figures, printed = run_bench("quality.py", "--merge", str(tmp_path / "seed0"), str(tmp_path / "seed1"),
                                 "--out", str(tmp_path / "merged"))
    assert figures["seeds"] == [0, 1] and figures["steps"] == 60
    merged = figures["methods"]["echodistill"]
    assert merged["calibrated_fidelity"] == pytest.approx(0.3)
    assert merged["calibrated_fidelity_sd"] == pytest.approx(0.1)
    assert merged["recognition"] == pytest.approx(0.15)
    assert len(figures["grids"]["circle/red/halves/blue"]) == 2
    assert "| echodistill student, 1 step | 0.300 ± 0.100 |" in printed
    # The cross-concept matrices, cell by cell over the runs that hold each cell.
    merged = figures["cross_concept"]["echodistill"]
    assert merged["calibrated"]["circle"] == pytest.approx({"circle": 0.3, "square": -0.3, "ring": -0.2})
    assert merged["calibrated"]["ring"] == pytest.approx({"circle": -0.2, "square": -0.2, "ring": 0.2})
    assert merged["runs"]["circle"] == {"circle": 2, "square": 2, "ring": 1} and merged["score"] == merged["calibrated"]
    assert "| circle | **0.300** | -0.300 | -0.200 |" in printed
    assert json.loads((tmp_path / "merged" / "results.json").read_text()) == figures


def test_the_student_signal_benchmark_reads_the_targets_by_noise_level(tmp_path):
    """On a result of the demo's concept (here untrained): the student step's weight is abar_t', and the
    teacher's refinement moves further from the student's sample the more it was re-noised."""
    from echodistill_core.config import PRESETS
    from echodistill_core.lab.demo import DEMO_CLASS_WORD, DEMO_TOKEN, default_models
    from echodistill_core.personalization import Personalization

    teacher, student, text = default_models()
    config = PRESETS["tiny"].replace(token=DEMO_TOKEN, class_word=DEMO_CLASS_WORD)
    Personalization.create(config, teacher, student, text).save(tmp_path / "result.safetensors")
    figures, printed = run_bench("student_signal.py", "--result", str(tmp_path / "result.safetensors"),
                                 "--levels", "50", "900", "--count", "2", "--pairs", "16", "--steps", "2",
                                 "--batch", "2", "--out", str(tmp_path / "grid.png"))
    abar = teacher.schedule.alphas_cumprod
    low, high = figures["targets"]["50"], figures["targets"]["900"]
    assert (low["weight"], high["weight"]) == (round(abar[50].item(), 3), round(abar[900].item(), 3))
    assert low["distance"] < high["distance"]
    for share in (low["recognised"], high["recognised"], figures["teacher_samples"]["recognised"],
                  figures["regressed_student"]["recognised"]):
        assert 0 <= share <= 1
    assert (tmp_path / "grid.png").is_file() and "t'   50: weight" in printed
