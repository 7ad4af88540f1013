"""The training view as a picture, drawn with PIL alone: the `loss_plot` output of the Train node.

One panel per loss, stacked on one step axis that reads 0 .. the run's length (while a run is young the
axis ends at a round number past the current step, so the first steps are not a sliver). Each panel has
its own scale with ticks, the raw values faint behind a smoothed curve, the current smoothed value in its
header, and the echo stage shaded from its first step. web/echodistill.js draws the same view in the
node while the run goes, with the same rules (`smoothing_window`, `smooth`, `nice_ticks`, `scale_ticks`,
`axis_end`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

LOSSES = {"teacher": (66, 135, 245), "student": (245, 130, 48), "discriminator": (90, 190, 90),
          "echo": (180, 90, 200)}
BACKGROUND, PANEL, GRID, TEXT, ECHO_SHADE = (24, 24, 28), (32, 32, 38), (58, 58, 66), (210, 210, 215), (48, 38, 58)


def smoothing_window(total_steps: int) -> int:
    """How many steps the smoothed curve averages over: a twentieth of the run, at least 1 (no smoothing)."""
    return max(1, round(total_steps / 20))


def smooth(values: list[float], window: int) -> list[float]:
    """Exponential moving average with the span `window` (alpha = 2 / (window + 1)), bias-corrected so the
    first values are not pulled towards 0; window 1 returns the values."""
    weight, average, smoothed = 1 - 2 / (window + 1), 0.0, []
    for index, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        smoothed.append(average / (1 - weight**index) if weight > 0 else value)
    return smoothed


def nice_step(span: float, count: int) -> float:
    """A round tick spacing (1, 2 or 5 times a power of ten) giving about `count` intervals over `span`."""
    raw = span / max(count, 1) if span > 0 else 1.0
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """Round tick values from a multiple of the spacing at or below `low` to one at or above `high`."""
    step = nice_step(high - low, count)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(i * step, 12) for i in range(first, max(last, first + 1) + 1)]


def scale_ticks(low: float, high: float, count: int) -> list[float]:
    """Ticks for a panel's scale: round numbers, at most count + 1 of them (a short panel keeps its labels apart)."""
    ticks = nice_ticks(low, high, count)
    for fewer in range(count - 1, 0, -1):
        if len(ticks) <= count + 1:
            break
        ticks = nice_ticks(low, high, fewer)
    return ticks


def axis_end(step: int, total: int) -> int:
    """Where the step axis ends: the run's length once a third of it is done, before that a round number
    past 1.5 times the current step (so 16 steps of 300 fill half the width, not a twentieth)."""
    if total <= 0:
        return max(step, 1)
    if 3 * step >= total:
        return total
    return int(min(total, nice_ticks(0, max(1.5 * step, 10), 4)[-1]))


def tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{value:.3g}"


@dataclass
class Panel:
    name: str
    steps: list[int]
    raw: list[float]
    smoothed: list[float]
    low: float  # the panel's scale: raw values outside it are clipped to its edges
    high: float
    ticks: list[float]

    @property
    def current(self) -> float:
        return self.smoothed[-1]


@dataclass
class PlotData:
    panels: list[Panel]
    step: int
    total: int
    x_end: int
    x_ticks: list[int]
    echo_start: int | None  # the first step of the echo stage, None without the echo


def plot_data(history: list[dict], total: int | None = None, echo_start: int | None = None) -> PlotData:
    """What the view shows: a panel per loss in `history` (entries {"step": s, name: value}), the step
    axis for a run of `total` steps (default: the last step), the echo from step `echo_start`."""
    step = history[-1]["step"] if history else 0
    total = total or step
    window = smoothing_window(total)
    panels = []
    for name in LOSSES:
        points = [(entry["step"], float(entry[name])) for entry in history if name in entry]
        if not points:
            continue
        steps, raw = (list(column) for column in zip(*points))
        smoothed = smooth(raw, window)
        # The scale holds the raw values between their 2nd and 98th percentiles and the current value: one
        # spike does not flatten the rest (it and its echo in the smoothed curve are clipped to the edge).
        low = min(smoothed[-1], float(np.percentile(raw, 2)))
        high = max(smoothed[-1], float(np.percentile(raw, 98)))
        flat = high - low <= 1e-9 * max(abs(low), abs(high), 1e-12)  # equal up to rounding: no span to scale
        pad = (abs(high) * 0.1 or 1.0) if flat else (high - low) * 0.08
        ticks = scale_ticks(low - pad, high + pad, 3)
        panels.append(Panel(name, steps, raw, smoothed, ticks[0], ticks[-1], ticks))
    x_end = axis_end(step, total)
    x_ticks = [int(t) for t in nice_ticks(0, x_end, 5) if t <= x_end]
    if x_ticks[-1] != x_end:
        x_ticks.append(x_end)  # the axis always ends on a labelled tick: the run's length
    return PlotData(panels, step, total, x_end, x_ticks, echo_start)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1: the small bitmap font
        return ImageFont.load_default()


def loss_plot(history: list[dict], total: int | None = None, echo_start: int | None = None,
              width: int = 768, panel_height: int = 120) -> torch.Tensor:
    """The training view as an image, [1, H, W, 3] in 0..1 (see the module's docstring)."""
    data = plot_data(history, total, echo_start)
    font, small = _font(14), _font(12)
    left, right, header, axis = 64, 16, 22, 30
    count = max(len(data.panels), 1)
    height = count * (panel_height + header) + axis + 8
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    plot_width = width - left - right

    def x_of(step: float) -> float:
        return left + step / max(data.x_end, 1) * plot_width

    if not data.panels:
        draw.text((left, 8), "no losses yet", fill=TEXT, font=font)
    for index, panel in enumerate(data.panels):
        top = index * (panel_height + header) + header
        bottom = top + panel_height
        colour = LOSSES[panel.name]
        draw.rectangle([left, top, left + plot_width, bottom], fill=PANEL)
        if data.echo_start is not None and data.echo_start <= data.x_end:
            draw.rectangle([x_of(data.echo_start - 1), top, left + plot_width, bottom], fill=ECHO_SHADE)
            draw.line([x_of(data.echo_start - 1), top, x_of(data.echo_start - 1), bottom], fill=LOSSES["echo"])
        for tick in data.x_ticks:
            draw.line([x_of(tick), top, x_of(tick), bottom], fill=GRID)

        def y_of(value: float) -> float:
            clipped = min(max(value, panel.low), panel.high)
            return bottom - (clipped - panel.low) / ((panel.high - panel.low) or 1.0) * panel_height

        for tick in panel.ticks:
            draw.line([left, y_of(tick), left + plot_width, y_of(tick)], fill=GRID)
            label = tick_label(tick)
            draw.text((left - 6 - draw.textlength(label, font=small), y_of(tick) - 7), label, fill=TEXT, font=small)
        faint = tuple(round(0.35 * c + 0.65 * p) for c, p in zip(colour, PANEL))
        for values, fill, line_width in ((panel.raw, faint, 1), (panel.smoothed, colour, 2)):
            line = [(x_of(s), y_of(v)) for s, v in zip(panel.steps, values)]
            if len(line) == 1:
                draw.ellipse([line[0][0] - 2, line[0][1] - 2, line[0][0] + 2, line[0][1] + 2], fill=fill)
            else:
                draw.line(line, fill=fill, width=line_width)
        title = f"{panel.name} loss  {tick_label(panel.current)}"
        draw.text((left, top - header + 3), title, fill=colour, font=font)
        if index == 0:
            status = f"step {data.step} of {data.total}"
            if data.echo_start is not None:
                status += f"   echo from step {data.echo_start}"
            draw.text((left + plot_width - draw.textlength(status, font=small), top - header + 4), status,
                      fill=TEXT, font=small)
    axis_top = count * (panel_height + header) + 4
    for tick in data.x_ticks:
        label = str(tick)
        draw.line([x_of(tick), axis_top - 4, x_of(tick), axis_top], fill=TEXT)
        draw.text((x_of(tick) - draw.textlength(label, font=small) / 2, axis_top + 1), label, fill=TEXT, font=small)
    draw.text((left + plot_width - draw.textlength("step", font=small), axis_top + 14), "step", fill=TEXT, font=small)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
