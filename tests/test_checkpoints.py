"""Single-file checkpoints: safe reading, family detection, the errors for every bad input."""

import os
import re

import pytest
import torch
from safetensors.torch import save_file

from echodistill_core.checkpoints import LOAD_STEPS, load_single_file, read_checkpoint
from echodistill_core.models import IncompatiblePairError, check_pair
from ldm_layout import tiny_family_models, write_config_folder, write_single_file
from echodistill_core.families import FAMILIES, CheckpointError, check_role, detect_family, pair_problem

UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"


def minimal(layout: str, width: int = 8) -> dict[str, torch.Tensor]:
    """The fewest keys that make a file of `layout`: a UNet conv, cross-attention and a text encoder."""
    state = {UNET_KEY: torch.zeros(4, 4, 3, 3),
             "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(4, width)}
    text = {
        "sd1": {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(10, width)},
        "sd2": {"cond_stage_model.model.token_embedding.weight": torch.zeros(10, width)},
        "sgm": {"conditioner.embedders.0.model.token_embedding.weight": torch.zeros(10, width)},
    }[layout]
    return state | text


class Evil:
    """A pickle that would create a file if it were ever executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_with_code_is_refused_and_never_run(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "model.ckpt"
    torch.save({"state_dict": {UNET_KEY: torch.zeros(1)}, "payload": Evil(marker)}, path)
    with pytest.raises(CheckpointError, match="model.ckpt.*never executes a pickle"):
        read_checkpoint(path)
    assert not marker.exists()


def test_weights_only_pickle_is_read(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": minimal("sd1"), "global_step": 3}, path)
    state = read_checkpoint(path)
    assert set(state) == set(minimal("sd1"))


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_and_empty_files_name_the_file(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    if suffix == ".safetensors":
        save_file(minimal("sd2"), path)
    else:
        torch.save(minimal("sd2"), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"cut{suffix} is corrupt or truncated.*download it again"):
        read_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        read_checkpoint(path)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a checkpoint file"):
        read_checkpoint(tmp_path / "notes.txt")


def test_a_lora_is_not_a_checkpoint():
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}
    with pytest.raises(CheckpointError, match="no UNet.*models/loras"):
        detect_family(lora)


def test_unet_without_text_encoder_is_an_unknown_architecture():
    with pytest.raises(CheckpointError, match="no text encoder this pack knows"):
        detect_family({UNET_KEY: torch.zeros(1)})


def test_a_broken_merge_is_refused():
    state = minimal("sd2") | {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
                              torch.zeros(4, 6)}
    with pytest.raises(CheckpointError, match="width 6 but its text encoder gives 8"):
        detect_family(state)


def test_sdxl_refiner_is_refused_with_a_reason():
    state = minimal("sgm") | {"model.diffusion_model.label_emb.0.0.weight": torch.zeros(4, 4)}
    with pytest.raises(CheckpointError, match="SDXL refiner"):
        detect_family(state)


def test_ambiguous_sd2_layout_follows_role_marker_and_choice():
    sd2 = minimal("sd2")
    assert detect_family(sd2).name == "sd2-512"
    assert detect_family(sd2 | {"v_pred": torch.tensor([])}).name == "sd2-768-v"
    assert detect_family(sd2, role="student").name == "sd-turbo"
    v_prediction = sd2 | {"v_pred": torch.tensor([])}  # as ComfyUI writes SD 2.1 768-v: never a Turbo student
    assert detect_family(v_prediction, role="student").name == "sd2-768-v"
    with pytest.raises(CheckpointError, match="multi-step model"):
        check_role(detect_family(v_prediction, role="student"), "student")
    assert detect_family(minimal("sgm")).name == "sd-turbo"  # as Stability publishes SD-Turbo
    assert detect_family(minimal("sgm"), choice="SD 2.x 512 (epsilon)").name == "sd2-512"
    with pytest.raises(CheckpointError, match="cannot be SD 1.x"):
        detect_family(sd2, choice="sd1")


def test_roles_and_pairs_are_checked():
    with pytest.raises(CheckpointError, match="multi-step model.*Turbo"):
        check_role(FAMILIES["sd2-768-v"], "student")
    with pytest.raises(CheckpointError, match="one-step model"):
        check_role(FAMILIES["sd-turbo"], "teacher")
    sd1_as_student = detect_family(minimal("sd1"), role="student")  # SD 1.x has no Turbo: refused, not guessed
    with pytest.raises(CheckpointError, match="SD 1.x, a multi-step model, so it cannot draw in one step"):
        check_role(sd1_as_student, "student")
    assert pair_problem(FAMILIES["sd2-768-v"], FAMILIES["sd-turbo"]) is None
    problem = pair_problem(FAMILIES["sd1"], FAMILIES["sd-turbo"], "v1-5.safetensors", "sd_turbo.safetensors")
    assert re.search("SD 1.x teacher v1-5.safetensors.*sd_turbo.safetensors.*cannot share one text encoder.*"
                     "with an SD 2.x 512 .epsilon. or SD 2.x 768 .v-prediction. teacher", problem), problem


def test_sdxl_is_recognised_but_refused_for_training(tmp_path):
    state = {UNET_KEY: torch.zeros(1),
             "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(3, 4),
             "conditioner.embedders.1.model.token_embedding.weight": torch.zeros(3, 4)}
    assert detect_family(state).name == "sdxl"
    assert detect_family(state, role="student").name == "sdxl-turbo"
    save_file(state, tmp_path / "xl.safetensors")
    with pytest.raises(CheckpointError, match="SDXL.*not yet supported"):
        load_single_file(tmp_path / "xl.safetensors")


# Files in the published key layouts, with shrunk shapes (tests/ldm_layout.py).

SCHEDULER = {"_class_name": "EulerDiscreteScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "beta_end": 0.012, "prediction_type": "epsilon", "timestep_spacing": "trailing"}


def layout_file(folder, layout, name="model.safetensors", **options):
    """A shrunk checkpoint of `layout`, its config folder, and the models it holds."""
    unet, vae, text_encoders, _ = tiny_family_models(layout)
    path = write_single_file(folder / name, layout, unet, vae, text_encoders, **options)
    config = write_config_folder(folder / f"{layout}-config", unet, vae, text_encoders, SCHEDULER)
    return path, config, (unet, vae, text_encoders)


@pytest.mark.parametrize("layout, extra, role, family", [
    ("sd1", None, None, "sd1"),
    ("sd2", None, None, "sd2-512"),
    ("sd2", {"v_pred": torch.tensor([])}, None, "sd2-768-v"),
    ("sd2", None, "student", "sd-turbo"),
    ("sgm_sd2", None, None, "sd-turbo"),
    ("sdxl", None, None, "sdxl"),
    ("sdxl", None, "student", "sdxl-turbo"),
])
def test_family_detection_on_published_layouts(tmp_path, layout, extra, role, family):
    path, _, _ = layout_file(tmp_path, layout, extra=extra)
    assert detect_family(read_checkpoint(path), role=role).name == family


@pytest.mark.parametrize("layout, role", [("sd1", "teacher"), ("sd2", "teacher"), ("sgm_sd2", "student")])
def test_a_single_file_loads_every_weight_exactly(tmp_path, layout, role):
    path, config, (unet, vae, (text_encoder,)) = layout_file(tmp_path, layout)
    model, text, family = load_single_file(path, role=role, config=config)
    for loaded, original in ((model.unet, unet), (model.vae, vae), (text.text_encoder, text_encoder)):
        expected = original.state_dict()
        assert loaded.state_dict().keys() == expected.keys()
        for key, value in loaded.state_dict().items():
            assert torch.equal(value, expected[key]), key
    assert len(text.tokenizer) == text_encoder.config.vocab_size
    assert text.tokenizer.pad_token == ("!" if layout != "sd1" else "<|endoftext|>")
    assert model.family == family.name and not any(p.requires_grad for p in model.unet.parameters())


def test_a_load_reports_each_part_and_stops_when_the_report_raises(tmp_path):
    """What a loader node's progress bar and Cancel rely on."""
    path, config, _ = layout_file(tmp_path, "sd2")
    reported = []
    load_single_file(path, role="teacher", config=config, progress=lambda done, total: reported.append((done, total)))
    assert reported == [(step, LOAD_STEPS) for step in range(1, LOAD_STEPS + 1)]

    def cancel_after_the_unet(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_single_file(path, role="teacher", config=config, progress=cancel_after_the_unet)


def test_a_folder_load_reports_each_part():
    from echodistill_core.lab.world import TEACHER_FOLDER
    from echodistill_core.loading import FOLDER_LOAD_STEPS, load_diffusers_folder

    reported = []
    load_diffusers_folder(TEACHER_FOLDER, progress=lambda done, total: reported.append((done, total)))
    assert reported == [(step, FOLDER_LOAD_STEPS) for step in range(1, FOLDER_LOAD_STEPS + 1)]


PROMPTS = ["a big pink heart on black", "a small red square on teal, twice!"]


def same_text(first, second) -> bool:
    """Equal tokens for PROMPTS and equal text-encoder weights (compared by name without `text_model.`)."""
    def weights(text):
        return {key.removeprefix("text_model."): value for key, value in text.text_encoder.state_dict().items()}

    a, b = weights(first), weights(second)
    return (first.tokenizer(PROMPTS).input_ids == second.tokenizer(PROMPTS).input_ids and a.keys() == b.keys()
            and all(torch.equal(a[key], b[key]) for key in a))


def test_a_saved_folder_is_in_the_layout_every_transformers_version_reads(tmp_path):
    """save_diffusers_folder writes the text encoder's weights under text_model. and the tokenizer's vocab.json
    and merges.txt beside tokenizer.json, whichever transformers writes: what transformers 4 reads as well as 5."""
    from safetensors import safe_open

    from echodistill_core.loading import load_diffusers_folder, save_diffusers_folder
    from echodistill_core.lab.tiny import tiny_model, tiny_scheduler, tiny_text

    model, text = tiny_model(latent=True), tiny_text()
    save_diffusers_folder(tmp_path / "model", model, text, tiny_scheduler())
    with safe_open(tmp_path / "model" / "text_encoder" / "model.safetensors", "pt") as file:
        assert all(key.startswith("text_model.") for key in file.keys())
    assert {"vocab.json", "merges.txt"} <= {path.name for path in (tmp_path / "model" / "tokenizer").iterdir()}
    _, loaded = load_diffusers_folder(tmp_path / "model")
    assert same_text(loaded, text)


def test_a_folder_written_by_transformers_5_alone_loads_on_every_version():
    """Text-encoder weights without text_model. and a tokenizer.json alone, as transformers 5 writes them: the
    bundled folders' old layout, which transformers 4 read as random weights and no tokenizer."""
    import shutil
    import tempfile
    from pathlib import Path

    from safetensors.torch import load_file

    from echodistill_core.lab.world import TEACHER_FOLDER
    from echodistill_core.loading import load_diffusers_folder

    with tempfile.TemporaryDirectory() as copy:
        folder = Path(shutil.copytree(TEACHER_FOLDER, Path(copy) / "teacher"))
        weights = folder / "text_encoder" / "model.safetensors"
        save_file({key.removeprefix("text_model."): value for key, value in load_file(weights).items()}, weights,
                  metadata={"format": "pt"})
        for name in ("vocab.json", "merges.txt"):
            (folder / "tokenizer" / name).unlink(missing_ok=True)
        _, bare = load_diffusers_folder(folder)
    _, bundled = load_diffusers_folder(TEACHER_FOLDER)
    assert same_text(bare, bundled)


def test_each_part_loads_in_its_own_dtype_when_given_one_per_part(tmp_path):
    """What a host that picks a dtype per part (ComfyUI's unet_dtype, vae_dtype, text_encoder_dtype) hands the
    loaders: a file and a folder alike load each part in its own."""
    from echodistill_core.lab.world import TEACHER_FOLDER
    from echodistill_core.loading import load_diffusers_folder

    dtypes = {"unet": torch.bfloat16, "vae": torch.float16, "text_encoder": torch.float64}
    path, config, _ = layout_file(tmp_path, "sd2")
    model, text, _ = load_single_file(path, role="teacher", config=config, dtype=dtypes)
    assert (model.dtype, model.vae.dtype, text.text_encoder.dtype) == tuple(dtypes.values())
    folder_model, folder_text = load_diffusers_folder(TEACHER_FOLDER, dtype=dtypes)
    assert (folder_model.dtype, folder_text.text_encoder.dtype) == (torch.bfloat16, torch.float64)


def test_a_weights_only_ckpt_loads_like_its_safetensors(tmp_path):
    path, config, _ = layout_file(tmp_path, "sd2")
    torch.save({"state_dict": read_checkpoint(path), "global_step": 1}, tmp_path / "model.ckpt")
    from_ckpt, _, _ = load_single_file(tmp_path / "model.ckpt", role="teacher", config=config)
    from_safetensors, _, _ = load_single_file(path, role="teacher", config=config)
    for key, value in from_ckpt.unet.state_dict().items():
        assert torch.equal(value, from_safetensors.unet.state_dict()[key]), key


def test_missing_text_encoder_weights_are_not_left_random(tmp_path):
    path, config, _ = layout_file(tmp_path, "sgm_sd2")
    state = read_checkpoint(path)
    del state["conditioner.embedders.0.model.transformer.resblocks.1.mlp.c_fc.weight"]
    save_file(state, tmp_path / "cut.safetensors")
    with pytest.raises(CheckpointError, match="cut.safetensors lacks 1 text encoder weights.*mlp.fc1"):
        load_single_file(tmp_path / "cut.safetensors", role="student", config=config)


def test_weights_that_do_not_fit_the_family_are_refused(tmp_path):
    path, _, _ = layout_file(tmp_path, "sd2", name="odd.safetensors")
    _, sd1_config, _ = layout_file(tmp_path, "sd1")
    with pytest.raises(CheckpointError, match="odd.safetensors was taken for SD 2.x 512.*do not fit.*family"):
        load_single_file(path, config=sd1_config)


def test_training_refuses_a_pair_from_two_families(tmp_path):
    sd1, sd1_config, _ = layout_file(tmp_path, "sd1", name="v1-5.safetensors")
    turbo, turbo_config, _ = layout_file(tmp_path, "sgm_sd2", name="sd_turbo.safetensors")
    teacher, text, _ = load_single_file(sd1, role="teacher", config=sd1_config)
    student, student_text, _ = load_single_file(turbo, role="student", config=turbo_config)
    with pytest.raises(IncompatiblePairError, match="SD 1.x teacher v1-5.safetensors.*SD-Turbo student "
                                                    "sd_turbo.safetensors.*cannot share one text encoder"):
        check_pair(teacher, student, text, student_text)
