"""The loss picture (Train's loss_plot output): its axis, scales, smoothing and echo marker."""

import math
import random

import numpy as np
import pytest

from echodistill_core.plots import (LOSSES, axis_end, loss_plot, nice_ticks, plot_data, scale_ticks, smooth,
                                    smoothing_window)


def run_history(steps: int, total: int = 300, echo_from: int = 226) -> list[dict]:
    rng = random.Random(0)
    history = []
    for step in range(1, steps + 1):
        entry = {"step": step, "teacher": 0.2 * math.exp(-step / 100) + 0.05 + 0.08 * rng.random(),
                 "student": 1.5 + rng.gauss(0, 0.2), "discriminator": 1.3 + rng.gauss(0, 0.1), "latent": 0.3}
        if step >= echo_from:
            entry["echo"] = 0.1 + 0.05 * rng.random()
        history.append(entry)
    return history


def test_the_step_axis_runs_from_0_to_the_runs_length_on_round_ticks():
    data = plot_data(run_history(300), total=300, echo_start=226)
    assert data.x_ticks == [0, 100, 200, 300] and data.x_end == 300
    odd = plot_data(run_history(37, total=37), total=37)
    assert odd.x_ticks[0] == 0 and odd.x_ticks[-1] == odd.x_end == 37  # the last tick is the run's length
    assert all(b > a for a, b in zip(odd.x_ticks, odd.x_ticks[1:]))


def test_a_young_run_fills_the_width_and_the_axis_reaches_the_total_from_a_third_on():
    early = plot_data(run_history(16), total=300)
    assert 16 * 1.5 <= early.x_end <= 50 and early.x_ticks[-1] == early.x_end
    assert [axis_end(step, 300) for step in (100, 150, 299, 300)] == [300] * 4
    assert all(axis_end(step, 300) >= step for step in range(1, 301))
    assert axis_end(5, 0) == 5  # an unknown length: the current step


def test_smoothing_keeps_the_level_and_removes_the_noise():
    rng = np.random.default_rng(0)
    raw = list(2.0 + rng.normal(0, 0.5, 300))
    smoothed = smooth(raw, smoothing_window(300))
    assert smoothing_window(300) > 1 and smoothing_window(20) == 1
    assert smooth(raw, 1) == raw
    assert smoothed[0] == raw[0]  # bias-corrected: the first value is not pulled towards 0
    assert np.std(smoothed[50:]) < np.std(raw[50:]) / 2
    assert abs(np.mean(smoothed[50:]) - 2.0) < 0.1
    assert smooth([3.0] * 10, 5) == pytest.approx([3.0] * 10)


def test_each_loss_has_its_own_scale_that_a_single_spike_does_not_flatten():
    history = run_history(300)
    history[150]["student"] = 500.0
    data = plot_data(history, total=300, echo_start=226)
    assert [panel.name for panel in data.panels] == ["teacher", "student", "discriminator", "echo"]
    for panel in data.panels:
        assert panel.low <= panel.current <= panel.high
        inside = np.mean([panel.low <= value <= panel.high for value in panel.raw])
        assert inside > 0.95  # all but the outliers
        assert panel.ticks[0] == panel.low and panel.ticks[-1] == panel.high and 2 <= len(panel.ticks) <= 4
    student = data.panels[1]
    assert student.high < 10  # the spike is clipped, the curve keeps its height
    assert data.panels[0].high < 1 and data.panels[0].current == data.panels[0].smoothed[-1]
    assert data.panels[3].steps[0] == 226  # the echo loss exists only in its stage


def test_nice_ticks_cover_the_range_with_round_numbers():
    ticks = nice_ticks(0.0123, 0.0871, 3)
    assert ticks[0] <= 0.0123 and ticks[-1] >= 0.0871 and ticks == [0.0, 0.05, 0.1]
    assert nice_ticks(0, 300, 5) == [0, 100, 200, 300]
    assert nice_ticks(0.0236, 0.1164, 2) == [0.0, 0.05, 0.1, 0.15]  # four labels: too many for a short panel
    assert scale_ticks(0.0236, 0.1164, 2) == [0.0, 0.1, 0.2]


def test_the_picture_has_a_panel_per_loss_and_the_echo_marked_where_it_starts():
    width, panel_height = 768, 120
    image = loss_plot(run_history(300), total=300, echo_start=226, width=width, panel_height=panel_height)
    assert image.shape[0] == 1 and image.shape[2] == width and image.shape[3] == 3
    without_echo = loss_plot(run_history(100, echo_from=10**6), total=300, width=width, panel_height=panel_height)
    assert image.shape[1] > without_echo.shape[1]  # one more panel: the echo's
    pixels = (image[0].numpy() * 255).round().astype(int)
    left, right = 64, 16
    marker = round(left + 225 / 300 * (width - left - right))
    middle_of_first_panel = 22 + panel_height // 2
    column = pixels[middle_of_first_panel - 10: middle_of_first_panel + 10, marker]
    assert (np.abs(column - np.array(LOSSES["echo"])).sum(axis=1) < 30).any()  # the echo line at step 225

    def background(x0, x1):  # the most common colour of the first panel between two columns
        colours, counts = np.unique(pixels[30:22 + panel_height - 5, x0:x1].reshape(-1, 3), axis=0, return_counts=True)
        return tuple(colours[counts.argmax()])
    assert background(left + 5, marker - 5) != background(marker + 5, width - right - 5)  # the echo stage is shaded


def test_a_loss_flat_up_to_rounding_gets_a_readable_scale():
    history = [{"step": step, "teacher": 0.3 + (1e-15 if step % 2 else 0.0)} for step in range(1, 11)]
    panel, = plot_data(history, total=10).panels
    assert 2 <= len(panel.ticks) <= 5 and panel.low < 0.3 < panel.high and panel.high - panel.low >= 0.01
