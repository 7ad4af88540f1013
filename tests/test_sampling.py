"""Samplers: seeds fix images, and the schedule's three prediction types agree with each other."""

import pytest
import torch

from conftest import SIZE
from echodistill_core.sampling import generate_student, generate_teacher, timesteps_for
from echodistill_core.schedule import NoiseSchedule
from echodistill_core.lab.tiny import tiny_pair, tiny_scheduler


def test_a_seed_gives_the_same_image_whatever_the_batch(pair):
    teacher, student, text = pair
    alone = generate_student(student, text, ["a photo of a dog"], [5])
    batched = generate_student(student, text, ["a photo of a cat", "a photo of a dog"], [1, 5])
    assert torch.allclose(alone[0], batched[1], atol=1e-6)
    again = generate_teacher(teacher, text, ["a photo of a dog"], [5], steps=4)
    assert torch.equal(again, generate_teacher(teacher, text, ["a photo of a dog"], [5], steps=4))
    assert not torch.equal(alone, generate_student(student, text, ["a photo of a dog"], [6]))


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_student_sampler_returns_images_in_range(pair, steps):
    _, student, text = pair
    images = generate_student(student, text, ["a photo of a dog"] * 2, [0, 1], steps=steps)
    assert images.shape == (2, SIZE, SIZE, 3) and images.min() >= 0 and images.max() <= 1


def test_one_step_starts_at_the_terminal_timestep(pair):
    assert timesteps_for(pair[1], 1) == [999]
    assert timesteps_for(pair[1], 4) == [999, 749, 499, 249]
    assert len(timesteps_for(pair[0], 25)) == 25


def test_latent_samplers_decode_to_full_size_images():
    teacher, student, text = tiny_pair("v_prediction", "epsilon", image_size=SIZE, latent=True)
    assert generate_teacher(teacher, text, ["a dog"], [0], steps=2).shape == (1, SIZE, SIZE, 3)
    assert generate_student(student, text, ["a dog"], [0]).shape == (1, SIZE, SIZE, 3)


def test_mismatched_prompts_and_seeds_are_refused(pair):
    with pytest.raises(ValueError, match="one seed per prompt"):
        generate_student(pair[1], pair[2], ["a", "b"], [0])


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_prediction_types_invert_each_other(prediction):
    schedule = NoiseSchedule.from_scheduler_config(tiny_scheduler(prediction).config)
    x0, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([1, 500, 999])
    z_t = schedule.add_noise(x0, eps, t)
    target = schedule.target(x0, eps, t)
    torch.testing.assert_close(schedule.to_x0(target, z_t, t), x0, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(schedule.to_eps_from_x0(schedule.to_x0(target, z_t, t), z_t, t), eps, atol=1e-3, rtol=1e-3)


def test_unknown_prediction_type_is_refused():
    with pytest.raises(ValueError, match="prediction type"):
        NoiseSchedule(torch.ones(10), "flow")


def test_samplers_report_each_step_and_stop_when_the_callback_raises(pair):
    teacher, student, text = pair
    calls = []
    generate_teacher(teacher, text, ["a photo of a dog"], [0], steps=5, callback=lambda *step: calls.append(step))
    generate_student(student, text, ["a photo of a dog"], [0], steps=3, callback=lambda *step: calls.append(step))
    assert calls == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5), (1, 3), (2, 3), (3, 3)]

    class Stop(Exception):
        pass

    def stop_at_two(done, total):
        if done == 2:
            raise Stop
    with pytest.raises(Stop):
        generate_teacher(teacher, text, ["a photo of a dog"], [0], steps=5, callback=stop_at_two)
