// EchoDistill in the browser.
//
// EchoDistill Train: a training view inside the node, drawn from the websocket messages the node sends
// ("echodistill.summary" when a run starts, "echodistill.progress" each step, "echodistill.preview" at
// step 1 and every preview_every steps, "echodistill.finished" / "echodistill.cancelled" at the end).
// A panel per loss on one step axis (0 .. the run's length; a round number past the current step while
// the run is young), each with its own scale and ticks, the raw values faint behind a smoothed curve,
// the current value in the panel's header and the echo stage shaded. The rules are those of the
// loss_plot output (echodistill_core/plots.py): smoothingWindow, smooth, niceTicks and axisEnd below
// are its smoothing_window, smooth, nice_ticks and axis_end. Below the curves: the latest previews at a
// readable size, labelled with their real size and prompts, then what the run computes.
// Choosing a preset fills the steps and learning-rate widgets with that preset's values (auto: 0).
// EchoDistill Save Personalized: the files it wrote and their folders, in the node.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const LOSSES = { teacher: "#4287f5", student: "#f58230", discriminator: "#5abe5a", echo: "#b45ac8" };
const BACKGROUND = "#18181c", PANEL = "#202026", GRID = "#3a3a42", TEXT = "#d2d2d7", ECHO_SHADE = "#30263a";
const VIEW_HEIGHT = 340, PREVIEW_HEIGHT = 190, SUMMARY_HEIGHT = 112, SAVED_HEIGHT = 120;
const NO_SUMMARY = "What the run computes (losses, discriminators, echo, learning rates) is listed here when it starts.";
const NO_PREVIEW = "The student's one-step previews appear here from step 1.";

// The plot's rules, as in echodistill_core/plots.py.
const smoothingWindow = (total) => Math.max(1, Math.round(total / 20));
function smooth(values, window) {
  const weight = 1 - 2 / (window + 1);
  let average = 0;
  return values.map((value, index) => {
    average = weight * average + (1 - weight) * value;
    return weight > 0 ? average / (1 - weight ** (index + 1)) : value;
  });
}
function niceStep(span, count) {
  const raw = span > 0 ? span / Math.max(count, 1) : 1;
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= raw);
}
function niceTicks(low, high, count = 4) {
  const step = niceStep(high - low, count);
  const first = Math.floor(low / step + 1e-9), last = Math.min(Math.max(Math.ceil(high / step - 1e-9), first + 1), first + 20);
  const ticks = [];
  for (let i = first; i <= last; i++) ticks.push(Number((i * step).toPrecision(12)));
  return ticks;
}
// Ticks for a panel's scale: round numbers, at most count + 1 of them (a short panel keeps its labels apart).
function scaleTicks(low, high, count) {
  let ticks = niceTicks(low, high, count);
  for (let fewer = count - 1; ticks.length > count + 1 && fewer >= 1; fewer--) ticks = niceTicks(low, high, fewer);
  return ticks;
}
function axisEnd(step, total) {
  if (total <= 0) return Math.max(step, 1);
  if (3 * step >= total) return total;
  return Math.min(total, niceTicks(0, Math.max(1.5 * step, 10), 4).at(-1));
}
const flat = (low, high) => high - low <= 1e-9 * Math.max(Math.abs(low), Math.abs(high), 1e-12);
function percentile(values, p) {
  const sorted = [...values].sort((a, b) => a - b);
  const position = (sorted.length - 1) * p / 100, below = Math.floor(position);
  return sorted[below] + (sorted[Math.min(below + 1, sorted.length - 1)] - sorted[below]) * (position - below);
}
function tickLabel(value) {
  if (value === 0) return "0";
  if (Math.abs(value) >= 1000 || Math.abs(value) < 0.01) return value.toExponential(0).replace("e+", "e");
  return String(Number(value.toPrecision(3)));
}

function panels(run, tickCount) {
  const window = smoothingWindow(run.total || run.step);
  const names = Object.keys(LOSSES).filter((name) => name !== "echo" || run.echoStart != null
    || run.points.some((p) => p.losses.echo !== undefined));
  return names.map((name) => {
    const points = run.points.filter((p) => p.losses[name] !== undefined);
    const raw = points.map((p) => p.losses[name]);
    const smoothed = smooth(raw, window);
    if (!raw.length) return { name, points, raw, smoothed };
    const current = smoothed.at(-1);
    const low = Math.min(current, percentile(raw, 2)), high = Math.max(current, percentile(raw, 98));
    const pad = flat(low, high) ? Math.abs(high) * 0.1 || 1 : (high - low) * 0.08;
    const ticks = scaleTicks(low - pad, high + pad, tickCount);
    return { name, points, raw, smoothed, current, ticks, low: ticks[0], high: ticks.at(-1) };
  });
}

function drawView(canvas, run) {
  const dpr = window.devicePixelRatio || 1;
  const width = Math.max(Math.round(canvas.clientWidth * dpr), 200), height = Math.round(VIEW_HEIGHT * dpr);
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const px = (value) => value * dpr;
  context.fillStyle = BACKGROUND;
  context.fillRect(0, 0, width, height);
  context.font = `${px(12)}px sans-serif`;
  context.textBaseline = "middle";
  const left = px(46), right = px(10), header = px(18), axis = px(28), status = px(18);
  const plotWidth = width - left - right;
  const count = Object.keys(LOSSES).length - (run.echoStart == null ? 1 : 0);
  const panelHeight = (height - status - axis - count * header) / count;
  const shown = panels(run, panelHeight / dpr >= 84 ? 3 : 2);  // ticks at least ~28 px apart
  if (!run.points.length) {
    context.fillStyle = TEXT;
    const status = run.cancelled ? cancelledText(run) : "The losses are drawn here, a panel each, when the run starts.";
    context.fillText(status, px(8), px(14));
    return;
  }
  const xEnd = axisEnd(run.step, run.total);
  const xTicks = niceTicks(0, xEnd, 5).filter((t) => t <= xEnd);
  if (xTicks.at(-1) !== xEnd) xTicks.push(xEnd);
  const x = (step) => left + (step / Math.max(xEnd, 1)) * plotWidth;
  shown.forEach((panel, index) => {
    const top = status + index * (panelHeight + header) + header, bottom = top + panelHeight;
    context.fillStyle = PANEL;
    context.fillRect(left, top, plotWidth, panelHeight);
    if (run.echoStart != null && run.echoStart - 1 <= xEnd) {
      context.fillStyle = ECHO_SHADE;
      context.fillRect(x(run.echoStart - 1), top, left + plotWidth - x(run.echoStart - 1), panelHeight);
      line(context, x(run.echoStart - 1), top, x(run.echoStart - 1), bottom, LOSSES.echo, px(1));
    }
    for (const tick of xTicks) line(context, x(tick), top, x(tick), bottom, GRID, px(1));
    const colour = LOSSES[panel.name];
    context.fillStyle = colour;
    context.textAlign = "left";
    const title = panel.raw.length ? `${panel.name} loss  ${tickLabel(panel.current)}`
      : `${panel.name} loss  (from step ${run.echoStart})`;
    context.fillText(title, left, top - header / 2);
    if (!panel.raw.length) return;
    const y = (value) => bottom - ((Math.min(Math.max(value, panel.low), panel.high) - panel.low)
      / ((panel.high - panel.low) || 1)) * panelHeight;
    context.textAlign = "right";
    for (const tick of panel.ticks) {
      line(context, left, y(tick), left + plotWidth, y(tick), GRID, px(1));
      context.fillStyle = TEXT;
      context.fillText(tickLabel(tick), left - px(5), Math.min(Math.max(y(tick), top + px(5)), bottom - px(5)));
    }
    context.save();
    context.beginPath();
    context.rect(left, top, plotWidth, panelHeight);
    context.clip();
    curve(context, panel.points.map((p) => p.step), panel.raw, x, y, fade(colour, 0.35), px(1));
    curve(context, panel.points.map((p) => p.step), panel.smoothed, x, y, colour, px(2));
    context.restore();
  });
  // The run's state on its own line above the panels: the step, the echo's start, or where a stopped run's
  // state is kept.
  context.textAlign = "left";
  context.fillStyle = run.cancelled ? "#f0a040" : TEXT;
  context.fillText(run.cancelled ? cancelledText(run) : `step ${run.step} of ${run.total}`
    + (run.echoStart != null ? ` · echo from step ${run.echoStart}` : ""), px(8), status / 2 + px(1));
  const axisTop = status + shown.length * (panelHeight + header);
  context.fillStyle = TEXT;
  context.textAlign = "center";
  for (const tick of xTicks) {
    line(context, x(tick), axisTop, x(tick), axisTop + px(4), TEXT, px(1));
    context.fillText(String(tick), Math.min(x(tick), width - px(12)), axisTop + px(11));
  }
  context.textAlign = "right";
  context.fillText("step", left + plotWidth, axisTop + px(23));
}

function line(context, x0, y0, x1, y1, colour, width) {
  context.strokeStyle = colour;
  context.lineWidth = width;
  context.beginPath();
  context.moveTo(x0, y0);
  context.lineTo(x1, y1);
  context.stroke();
}

function curve(context, steps, values, x, y, colour, width) {
  context.strokeStyle = context.fillStyle = colour;
  context.lineWidth = width;
  if (values.length === 1) {
    context.beginPath();
    context.arc(x(steps[0]), y(values[0]), width * 1.5, 0, 2 * Math.PI);
    context.fill();
    return;
  }
  context.beginPath();
  values.forEach((value, i) => (i ? context.lineTo(x(steps[i]), y(value)) : context.moveTo(x(steps[i]), y(value))));
  context.stroke();
}

function fade(hex, amount) {  // the colour mixed into the panel's background
  const channels = (h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16));
  const [c, p] = [channels(hex), channels(PANEL)];
  return `rgb(${c.map((v, i) => Math.round(amount * v + (1 - amount) * p[i])).join(",")})`;
}

const cancelledText = (run) => `${run.cancelled.why ?? "cancelled"} after step ${run.cancelled.step}: `
  + `resume_state ${run.cancelled.state} continues it`;

function showPreviews(element, preview) {
  element.replaceChildren();
  const [height, width] = preview.size;
  const available = Math.max(element.clientWidth - 12, 120);
  const count = preview.images.length;
  // A whole number of screen pixels per image pixel (sharp blocks), as large as fits, at most 256 px.
  const room = Math.min(256, Math.floor((available - 6 * (count - 1)) / count), PREVIEW_HEIGHT - 44);
  const scale = room >= width ? Math.floor(room / width) : room / width;
  const shownWidth = Math.round(width * scale);
  const label = document.createElement("div");
  label.className = "echodistill-preview-label";
  label.textContent = `step ${preview.step} of ${preview.total} · ${width} × ${height} px each`
    + (scale > 1 ? `, shown ${scale}× (each pixel a block)` : scale < 1 ? ", shown smaller" : "");
  Object.assign(label.style, { marginBottom: "3px", color: TEXT });
  const row = document.createElement("div");
  Object.assign(row.style, { display: "flex", gap: "6px", overflowX: "auto" });
  preview.images.forEach((url, index) => {
    const figure = document.createElement("figure");
    Object.assign(figure.style, { margin: "0", width: `${shownWidth}px`, flex: "0 0 auto" });
    const image = document.createElement("img");
    image.src = url;
    image.alt = image.title = preview.prompts[index];
    Object.assign(image.style, { width: `${shownWidth}px`, height: `${shownWidth * height / width}px`,
                                 imageRendering: "pixelated", display: "block" });
    const caption = document.createElement("figcaption");
    caption.textContent = preview.prompts[index];
    Object.assign(caption.style, { whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis", color: "#aaa" });
    figure.append(image, caption);
    row.append(figure);
  });
  element.append(label, row);
}

function panel(className, text, height) {
  const element = document.createElement("div");
  element.className = className;
  element.textContent = text;
  Object.assign(element.style, { height: `${height}px`, overflowY: "auto", whiteSpace: "pre-wrap",
    font: "11px/1.35 sans-serif", color: "#ccc", background: BACKGROUND, padding: "4px 6px",
    boxSizing: "border-box" });
  return element;
}

function addDom(node, name, type, element, height) {
  node.addDOMWidget(name, type, element, { serialize: false, getMinHeight: () => height, getHeight: () => height });
}

function setUpTrain(node, nodeData) {
  const canvas = document.createElement("canvas");
  canvas.className = "echodistill-losses";
  Object.assign(canvas.style, { width: "100%", height: `${VIEW_HEIGHT}px`, display: "block" });
  const run = { points: [], step: 0, total: 0, echoStart: null, cancelled: null };
  const previews = panel("echodistill-previews", NO_PREVIEW, PREVIEW_HEIGHT);
  const summary = panel("echodistill-summary", NO_SUMMARY, SUMMARY_HEIGHT);
  node.echodistill = { canvas, run, previews, summary, redraw: () => drawView(canvas, run) };
  addDom(node, "losses", "echodistill_losses", canvas, VIEW_HEIGHT);
  addDom(node, "previews", "echodistill_previews", previews, PREVIEW_HEIGHT);
  addDom(node, "summary", "echodistill_summary", summary, SUMMARY_HEIGHT);
  new ResizeObserver(() => node.echodistill.redraw()).observe(canvas);
  node.echodistill.redraw();

  // Choosing a preset shows its own steps and learning rates in their widgets, where 0 would mean the same,
  // unseen; choosing auto puts back 0, as auto's preset depends on the models. Each such widget's input lists
  // the values (its echodistill_presets, from nodes/training.py).
  const inputs = { ...(nodeData.input?.required ?? {}), ...(nodeData.input?.optional ?? {}) };
  const preset = node.widgets?.find((w) => w.name === "preset");
  if (preset) {
    const chosen = preset.callback;
    preset.callback = function (value) {
      for (const [name, input] of Object.entries(inputs)) {
        const filled = input?.[1]?.echodistill_presets?.[value];
        const widget = node.widgets.find((w) => w.name === name);
        if (filled !== undefined && widget) widget.value = filled;
      }
      return chosen?.apply(this, arguments);
    };
  }
}

// A panel that shows the lines a node reports when it has run (its ui "text"): Save's files, Paper Metrics' table.
function textPanel(placeholder) {
  return (node) => {
    const saved = panel("echodistill-saved", placeholder, SAVED_HEIGHT);
    node.echodistill = { saved };
    addDom(node, "saved", "echodistill_saved", saved, SAVED_HEIGHT);
    const executed = node.onExecuted;
    node.onExecuted = function (message) {
      executed?.apply(this, arguments);
      if (message?.text) saved.textContent = message.text.join("\n");
    };
  };
}

const setUpSave = textPanel("The files' names and folders are listed here once saved.");
const setUpScores = textPanel("The figures are listed here once scored: the personalized model, the untouched one, "
  + "the paper's where the same network made it.");

// A new node's seed control starts at "fixed", not the frontend's "randomize": queued again, a graph trains and
// draws the same (the schema can only ask for the control, not its start). A loaded workflow keeps its own.
function fixSeed(node) {
  const control = node.widgets?.find((w) => w.name === "control_after_generate");
  if (control) control.value = "fixed";
}

app.registerExtension({
  name: "echodistill.liveview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const seeded = nodeData.name?.startsWith("EchoDistill") && (nodeData.input?.required?.seed
      ?? nodeData.input?.optional?.seed)?.[1]?.control_after_generate;
    const setUp = { EchoDistillTrain: setUpTrain, EchoDistillSavePersonalized: setUpSave,
      EchoDistillPaperMetrics: setUpScores }[nodeData.name];
    if (!setUp && !seeded) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = created?.apply(this, arguments);
      if (seeded) fixSeed(this);
      setUp?.(this, nodeData);
      return result;
    };
  },
  setup() {
    const find = (id) => {
      const node = app.graph?.getNodeById(Number(id)) ?? app.graph?.getNodeById(id);
      return node?.echodistill?.run ? node : null;
    };
    api.addEventListener("echodistill.summary", ({ detail }) => {
      const node = find(detail.node);
      if (!node) return;
      const { run, summary } = node.echodistill;
      const points = (detail.history ?? []).map(({ step, ...losses }) => ({ step, losses }));
      Object.assign(run, { points, step: points.at(-1)?.step ?? 0, total: detail.total, echoStart: detail.echo_start,
                           cancelled: null });
      summary.textContent = detail.lines.join("\n");
      node.echodistill.redraw();
    });
    api.addEventListener("echodistill.progress", ({ detail }) => {
      const node = find(detail.node);
      if (!node) return;
      const run = node.echodistill.run;
      if (detail.step <= run.step) run.points = run.points.filter((p) => p.step < detail.step);
      Object.assign(run, { step: detail.step, total: detail.total, echoStart: detail.echo_start, cancelled: null });
      run.points.push({ step: detail.step, losses: detail.losses });
      node.echodistill.redraw();
    });
    api.addEventListener("echodistill.preview", ({ detail }) => {
      const node = find(detail.node);
      if (node) showPreviews(node.echodistill.previews, detail);
    });
    api.addEventListener("echodistill.finished", ({ detail }) => {
      const node = find(detail.node);
      if (node) node.echodistill.summary.textContent = `result saved as ${detail.result}\n`  // first: where to find it
        + node.echodistill.summary.textContent;
    });
    api.addEventListener("echodistill.cancelled", ({ detail }) => {
      const node = find(detail.node);
      if (!node) return;
      node.echodistill.run.cancelled = detail;
      node.echodistill.redraw();
    });
  },
});
