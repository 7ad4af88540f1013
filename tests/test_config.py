"""Every setting is checked against its meaning when a config is made, before anything loads or trains."""

import pytest

from conftest import make_concept, tiny_config
from echodistill_core.config import PRESETS, EchoDistillConfig
from echodistill_core.trainer import EchoDistillTrainer


@pytest.mark.parametrize("field, value, message", [
    ("teacher_lr", -1e-5, "teacher_lr must be positive"),  # would train by gradient ascent
    ("student_lr", 0.0, "student_lr must be positive"),
    ("token_lr", -1.0, "token_lr must be positive, or 0 for the teacher's"),
    ("lora_rank", 0, "lora_rank must be at least 1"),
    ("resolution", -16, "resolution must be 0 .* or a multiple of 8"),
    ("resolution", 500, "resolution must be 0 .* or a multiple of 8"),
    ("steps", 0, "steps must be at least 1"),
    ("batch_size", -2, "batch_size must be at least 1"),
    ("grad_clip", 0.0, "grad_clip must be positive"),
    ("color_patch", 4, "color_patch must be an odd number"),
    ("echo_keep", 0.0, "echo_keep must be a fraction in \\(0, 1\\]"),
    ("echo_context_probability", 1.5, "echo_context_probability must be a probability"),
    ("echo_contexts", (), "echo_contexts must be at least one context"),
    ("adam_betas", (0.9, 1.0), "adam_betas must be two numbers in \\[0, 1\\)"),
    ("teacher_timesteps", (500, 100), "teacher_timesteps must be an inclusive range"),
    ("parameterisation", "dreambooth", "parameterisation must be custom_diffusion or lora"),
])
def test_a_setting_outside_its_meaning_is_refused_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        PRESETS["paper"].replace(**{field: value})


def test_every_problem_is_named_at_once():
    with pytest.raises(ValueError, match="steps must be at least 1, not 0; lora_rank must be at least 1, not 0"):
        EchoDistillConfig(steps=0, lora_rank=0)


def test_the_presets_are_valid_and_a_saved_config_reads_back_equal():
    for preset in PRESETS.values():
        assert EchoDistillConfig.from_dict(preset.to_dict()) == preset


def test_timesteps_past_the_teachers_schedule_are_refused(pair):
    teacher, student, text = pair
    config = tiny_config(renoise_timesteps=(0, 4999))
    with pytest.raises(ValueError, match="renoise_timesteps reach past the teacher's last timestep \\(999\\)"):
        EchoDistillTrainer(teacher, student, text, make_concept(config), config)
