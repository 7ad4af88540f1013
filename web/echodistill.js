// EchoDistill's live training view: loss curves drawn inside the EchoDistill Train node while it
// runs, from the "echodistill.progress" websocket messages the node sends each step, and below them
// what the run computes (its losses, discriminators and echo), from the "echodistill.summary" message
// sent when it starts. The latest one-step preview is ComfyUI's own progress preview, on the same node.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const CURVES = { teacher: "#4287f5", student: "#f58230", discriminator: "#5abe5a", echo: "#b45ac8" };
const HEIGHT = 140;
const SUMMARY_HEIGHT = 150;
const NO_SUMMARY = "The active losses and discriminators are listed here when the run starts.";

function draw(canvas, run) {
  const context = canvas.getContext("2d");
  const width = (canvas.width = canvas.clientWidth * devicePixelRatio || 300);
  const height = (canvas.height = HEIGHT * devicePixelRatio);
  context.fillStyle = "#18181c";
  context.fillRect(0, 0, width, height);
  context.font = `${11 * devicePixelRatio}px sans-serif`;
  const pad = 8 * devicePixelRatio;
  let x = pad;
  for (const [name, colour] of Object.entries(CURVES)) {
    const points = run.points.filter((p) => p.losses[name] !== undefined);
    const last = points.length ? points[points.length - 1].losses[name].toFixed(3) : "–";
    context.fillStyle = colour;
    context.fillText(`${name} ${last}`, x, pad + 8 * devicePixelRatio);
    x += context.measureText(`${name} ${last}`).width + pad;
    if (points.length < 2) continue;
    const values = points.map((p) => p.losses[name]);
    const low = Math.min(...values), high = Math.max(...values), span = high - low || 1;
    context.strokeStyle = colour;
    context.lineWidth = 1.5 * devicePixelRatio;
    context.beginPath();
    points.forEach((p, i) => {
      const px = pad + ((p.step - 1) / Math.max(run.total - 1, 1)) * (width - 2 * pad);
      const py = height - pad - ((p.losses[name] - low) / span) * (height - 4 * pad);
      i ? context.lineTo(px, py) : context.moveTo(px, py);
    });
    context.stroke();
  }
  context.fillStyle = "#aaa";
  const status = run.cancelled ? `cancelled at ${run.cancelled.step}: state ${run.cancelled.state}` :
    `step ${run.step} / ${run.total}`;
  context.fillText(status, pad, height - pad / 2);
}

app.registerExtension({
  name: "echodistill.liveview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "EchoDistillTrain") return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = created?.apply(this, arguments);
      const canvas = document.createElement("canvas");
      canvas.className = "echodistill-losses";
      canvas.style.width = "100%";
      canvas.style.height = `${HEIGHT}px`;
      this.echodistill = { canvas, run: { points: [], step: 0, total: 0 } };
      this.addDOMWidget("losses", "echodistill_losses", canvas, {
        serialize: false,
        getMinHeight: () => HEIGHT,
        getHeight: () => HEIGHT,
      });
      const summary = document.createElement("div");
      summary.className = "echodistill-summary";
      summary.textContent = NO_SUMMARY;
      Object.assign(summary.style, { height: `${SUMMARY_HEIGHT}px`, overflowY: "auto", whiteSpace: "pre-wrap",
        font: "10.5px/1.35 sans-serif", color: "#ccc", background: "#18181c", padding: "4px 6px",
        boxSizing: "border-box" });
      this.echodistill.summary = summary;
      this.addDOMWidget("summary", "echodistill_summary", summary, {
        serialize: false,
        getMinHeight: () => SUMMARY_HEIGHT,
        getHeight: () => SUMMARY_HEIGHT,
      });
      draw(canvas, this.echodistill.run);
      return result;
    };
  },
  setup() {
    const find = (id) => app.graph?.getNodeById(Number(id)) ?? app.graph?.getNodeById(id);
    api.addEventListener("echodistill.progress", ({ detail }) => {
      const node = find(detail.node);
      if (!node?.echodistill) return;
      const run = node.echodistill.run;
      if (detail.step <= run.step) run.points = [];  // a new run on this node
      Object.assign(run, { step: detail.step, total: detail.total, cancelled: null });
      run.points.push({ step: detail.step, losses: detail.losses });
      draw(node.echodistill.canvas, run);
    });
    api.addEventListener("echodistill.summary", ({ detail }) => {
      const node = find(detail.node);
      if (node?.echodistill) node.echodistill.summary.textContent = detail.lines.join("\n");
    });
    api.addEventListener("echodistill.cancelled", ({ detail }) => {
      const node = find(detail.node);
      if (!node?.echodistill) return;
      node.echodistill.run.cancelled = detail;
      draw(node.echodistill.canvas, node.echodistill.run);
    });
  },
});
