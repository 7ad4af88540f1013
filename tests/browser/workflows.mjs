#!/usr/bin/env node
// Browser test of the EchoDistill pack in a real ComfyUI frontend (headless Chromium, playwright-core).
//
//   node workflows.mjs <comfyui-url> <workflows-folder> <screenshot-folder>
//
// For every *.json workflow in the folder: loads it into the graph with the frontend's own
// app.loadGraphData, checks that no node type is missing (the frontend's missing-node list, the
// "Some Nodes Are Missing" dialog, node.has_errors, LiteGraph.registered_node_types), and converts
// it with app.graphToPrompt, checking that every class_type of the API prompt is in /object_info.
// The workflow whose file name starts with "1_" is also run from the UI (the Run button); the test
// waits for its /history entry to say "success" and checks the live loss view of EchoDistillTrain
// (canvas.echodistill-losses inside the node's DOM widget) is drawn and that the node lists the run's
// losses and discriminators (div.echodistill-summary), with screenshots mid-run and after. Every
// workflow is also checked for overlapping nodes and photographed as loaded (<name>_loaded.png, and
// <name>_image_networks.png at 100 % where it has Load Image Networks). Exit code 0 when all checks
// pass; the last line printed is a JSON summary.
//
// Environment: CHROMIUM (default /usr/bin/chromium), ECHODISTILL_RUN_TIMEOUT (seconds, default 900),
// ECHODISTILL_RUN_WORKFLOW (file-name prefix of the workflow to run, default "1_"),
// ECHODISTILL_TRAIN_STEPS (the Train node's steps are set to this in the UI before the run, as a user
// would, default 30; "workflow" keeps the file's 300, which takes 3-15 min on 2 busy cores).

import { readFileSync, readdirSync, mkdirSync, writeFileSync } from "node:fs";
import { join, basename } from "node:path";
import { chromium } from "playwright-core";

const [url, workflowsDir, outDir] = process.argv.slice(2);
if (!url || !workflowsDir || !outDir) {
  console.error("usage: node workflows.mjs <comfyui-url> <workflows-folder> <screenshot-folder>");
  process.exit(2);
}
const base = url.replace(/\/+$/, "");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const RUN_TIMEOUT = 1000 * Number(process.env.ECHODISTILL_RUN_TIMEOUT || 900);
const RUN_PREFIX = process.env.ECHODISTILL_RUN_WORKFLOW ?? "1_";
const TRAIN_STEPS = (process.env.ECHODISTILL_TRAIN_STEPS ?? "30") === "workflow" ? null : Number(process.env.ECHODISTILL_TRAIN_STEPS ?? 30);
const BACKGROUND = [0x18, 0x18, 0x1c]; // the loss view's fill colour (web/echodistill.js)
mkdirSync(outDir, { recursive: true });

const results = { url: base, workflows: {}, run: null, screenshots: [], consoleErrors: [], pageErrors: [], failures: [] };
const log = (...parts) => console.log("[browser-test]", ...parts);
const fail = (message) => { results.failures.push(message); log("FAIL:", message); };
const check = (condition, message) => { if (!condition) fail(message); return !!condition; };
let readyPageErrors = null;  // page errors seen before the UI was ready (the frontend's own start-up)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function http(path, options = {}) {
  const response = await fetch(base + path, options);
  if (!response.ok) throw new Error(`${options.method || "GET"} ${path}: HTTP ${response.status}`);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

// Settings the test needs, stored on the server before the page loads (the server may have a fresh
// user folder). TutorialCompleted hides the first-run template dialog. The two canvas settings are
// their defaults for the "legacy" navigation mode: stored, they keep frontend 1.27's
// Comfy.Canvas.NavigationMode onChange from writing a not-yet-registered setting at start-up
// ("Cannot read properties of undefined (reading 'id')"), a frontend bug unrelated to the pack.
const SETTINGS = {
  "Comfy.TutorialCompleted": true,
  "Comfy.Canvas.LeftMouseClickBehavior": "panning",
  "Comfy.Canvas.MouseWheelScroll": "zoom",
  "Comfy.Workflow.ShowMissingNodesWarning": true,
  "LiteGraph.Canvas.MinFontSizeForLOD": 0,  // full detail in the zoomed-out screenshot, not grey boxes
};

async function main() {
  for (const [id, value] of Object.entries(SETTINGS)) {
    await http(`/settings/${encodeURIComponent(id)}`, { method: "POST", body: JSON.stringify(value) });
  }
  const objectInfo = await http("/object_info");
  const extensions = await http("/extensions");
  check(extensions.some((path) => /echodistill\.js$/.test(path)), `/extensions does not list echodistill.js: ${extensions}`);

  const files = readdirSync(workflowsDir).filter((name) => name.endsWith(".json")).sort();
  check(files.length > 0, `no workflows in ${workflowsDir}`);

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--no-first-run"],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, deviceScaleFactor: 1 });
    const page = await context.newPage();
    page.on("console", (message) => {
      if (message.type() !== "error") return;
      const location = message.location()?.url || "";
      results.consoleErrors.push({ text: message.text().slice(0, 500), location });
    });
    page.on("pageerror", (error) => results.pageErrors.push((error.stack || String(error)).slice(0, 1500)));
    page.on("response", (response) => {
      if (response.status() >= 400 && /echodistill/i.test(response.url()))
        fail(`HTTP ${response.status()} for ${response.url()}`);
    });

    await page.goto(base + "/", { waitUntil: "load" });
    // Ready when the frontend has registered the node definitions (stock and pack): loading a graph
    // earlier reports every node type as missing.
    const expected = Object.keys(objectInfo).filter((type) => type.startsWith("EchoDistill")).concat(["PreviewImage"]);
    // If a pack type never registers, go on after the timeout: the check below names it.
    await page.waitForFunction((types) => {
      const app = window.app ?? window.comfyAPI?.app?.app;
      const registered = window.LiteGraph?.registered_node_types ?? {};
      return app?.graph && app?.canvas && app.extensions?.length && types.every((type) => type in registered);
    }, expected, { timeout: 120000 }).catch(() => log("not every expected node type registered after 120 s"));
    await page.waitForFunction(() => (window.app ?? window.comfyAPI?.app?.app)?.canvas, null, { timeout: 10000 });
    const loaded = await page.evaluate(() => {
      const app = (window.app = window.app ?? window.comfyAPI.app.app);
      // A probe extension: the frontend hands afterConfigureGraph the node types it could not find.
      window.__probe = { missing: null, events: [] };
      app.registerExtension({
        name: "echodistill.browser-test-probe",
        afterConfigureGraph(missingNodeTypes) { window.__probe.missing = [...(missingNodeTypes ?? [])]; },
      });
      const api = window.comfyAPI.api.api;
      for (const type of ["execution_start", "execution_success", "execution_error", "execution_interrupted",
                          "echodistill.progress", "echodistill.cancelled"]) {
        api.addEventListener(type, ({ detail }) => window.__probe.events.push({ type, detail, time: Date.now() }));
      }
      const queuePrompt = api.queuePrompt.bind(api);  // keep the prompt id the server answers with
      api.queuePrompt = async (...args) => {
        const response = await queuePrompt(...args);
        window.__probe.queued = response;
        return response;
      };
      return {
        frontend: window.__COMFYUI_FRONTEND_VERSION__ ?? null,
        extensions: app.extensions.map((e) => e.name).filter((name) => /echodistill/i.test(name)),
        registered: Object.keys(LiteGraph.registered_node_types).filter((type) => type.startsWith("EchoDistill")),
      };
    });
    readyPageErrors = results.pageErrors.length;
    results.frontend = loaded.frontend;
    results.registeredEchoDistillTypes = loaded.registered;
    log(`UI loaded (frontend ${loaded.frontend}); extensions ${loaded.extensions.join(", ")}; `
        + `${loaded.registered.length} EchoDistill node types registered`);
    check(loaded.extensions.includes("echodistill.liveview"), "the echodistill.liveview extension is not registered");
    const packTypes = Object.keys(objectInfo).filter((type) => type.startsWith("EchoDistill"));
    const unregistered = packTypes.filter((type) => !loaded.registered.includes(type));
    check(!unregistered.length, `pack node types in /object_info but not registered in the frontend: ${unregistered}`);

    for (const file of files) {
      const workflow = JSON.parse(readFileSync(join(workflowsDir, file), "utf8"));
      const result = await loadAndConvert(page, file, workflow, objectInfo);
      results.workflows[file] = result;
      if (RUN_PREFIX && file.startsWith(RUN_PREFIX)) {
        results.run = await runFromUi(page, file, workflow);
      }
    }
    if (RUN_PREFIX && !results.run) fail(`no workflow file starts with "${RUN_PREFIX}"`);
  } finally {
    await browser.close();
  }
}

async function closeDialogs(page) {
  for (let i = 0; i < 3; i++) {
    const open = await page.locator(".p-dialog").count();
    if (!open) return;
    await page.keyboard.press("Escape");
    await sleep(300);
  }
}

async function dialogTexts(page) {
  return page.evaluate(() => [...document.querySelectorAll(".p-dialog")]
    .filter((dialog) => dialog.offsetParent !== null || dialog.getClientRects().length)
    .map((dialog) => dialog.innerText.trim().replace(/\s+/g, " ").slice(0, 400)));
}

async function loadAndConvert(page, file, workflow, objectInfo) {
  await closeDialogs(page);
  await page.evaluate(() => { window.__probe.missing = null; });
  const errorsBefore = results.pageErrors.length;
  await page.evaluate(([w, name]) => window.app.loadGraphData(w, true, true, name), [workflow, basename(file, ".json")]);
  await page.waitForFunction(() => window.__probe.missing !== null, null, { timeout: 30000 });
  await sleep(800);  // dialogs open asynchronously
  const state = await page.evaluate(() => {
    const app = window.app;
    const nodes = app.graph.nodes.map((node) => {
      const combos = (node.widgets ?? []).filter((w) => w.type === "combo" && Array.isArray(w.options?.values))
        .filter((w) => !w.options.values.includes(w.value)).map((w) => `${w.name}=${JSON.stringify(w.value)}`);
      return { id: node.id, type: node.type, registered: node.type in LiteGraph.registered_node_types,
               hasErrors: !!node.has_errors, invalidCombos: combos };
    });
    return { nodes, missing: window.__probe.missing };
  });
  const dialogs = await dialogTexts(page);
  const result = { nodes: state.nodes.length, missingNodeTypes: state.missing, dialogs, invalidComboValues: {} };
  check(state.nodes.length === workflow.nodes.length,
        `${file}: ${state.nodes.length} nodes in the graph, ${workflow.nodes.length} in the file`);
  check(!state.missing.length, `${file}: the frontend reports missing node types ${JSON.stringify(state.missing)}`);
  const unregistered = state.nodes.filter((n) => !n.registered).map((n) => `${n.id}:${n.type}`);
  check(!unregistered.length, `${file}: node types not registered in LiteGraph: ${unregistered}`);
  const broken = state.nodes.filter((n) => n.hasErrors).map((n) => `${n.id}:${n.type}`);
  check(!broken.length, `${file}: nodes with has_errors: ${broken}`);
  check(!dialogs.some((text) => /missing/i.test(text)), `${file}: a missing-nodes dialog is open: ${dialogs}`);
  for (const node of state.nodes) if (node.invalidCombos.length) result.invalidComboValues[`${node.id}:${node.type}`] = node.invalidCombos;
  if (file.startsWith(RUN_PREFIX)) {
    check(!Object.keys(result.invalidComboValues).length,
          `${file}: combo values not offered by the server: ${JSON.stringify(result.invalidComboValues)}`);
  }
  if (results.pageErrors.length > errorsBefore) result.pageErrors = results.pageErrors.slice(errorsBefore);
  result.overlaps = await overlappingNodes(page);
  check(!result.overlaps.length, `${file}: nodes overlap: ${result.overlaps.join("; ")}`);
  await photograph(page, basename(file, ".json"));

  const prompt = await page.evaluate(async () => {
    const { output } = await window.app.graphToPrompt();
    return output;
  });
  const classTypes = Object.values(prompt).map((entry) => entry.class_type);
  const unknown = [...new Set(classTypes.filter((type) => !(type in objectInfo)))];
  result.promptNodes = classTypes.length;
  result.classTypes = [...new Set(classTypes)].sort();
  check(classTypes.length > 0, `${file}: graphToPrompt gave an empty prompt`);
  check(!unknown.length, `${file}: graphToPrompt class_types missing from /object_info: ${JSON.stringify(unknown)}`);
  // Every link of the prompt points to a node of the prompt.
  for (const [id, entry] of Object.entries(prompt)) {
    for (const [name, value] of Object.entries(entry.inputs)) {
      if (Array.isArray(value) && value.length === 2 && typeof value[1] === "number")
        check(String(value[0]) in prompt, `${file}: node ${id} input ${name} links to absent node ${value[0]}`);
    }
  }
  log(`${file}: ${state.nodes.length} nodes, prompt of ${classTypes.length}, `
      + `missing types ${JSON.stringify(state.missing)}, dialogs ${JSON.stringify(dialogs)}`
      + (Object.keys(result.invalidComboValues).length ? `, unavailable choices ${JSON.stringify(result.invalidComboValues)}` : ""));
  await closeDialogs(page);
  return result;
}

// Pairs of nodes whose boxes (title bar included, as laid out by the frontend) intersect.
async function overlappingNodes(page) {
  return page.evaluate(() => {
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    const boxes = window.app.graph.nodes.map((node) => ({
      name: `${node.id}:${node.type}`, x: node.pos[0], y: node.pos[1] - title, w: node.size[0], h: node.size[1] + title }));
    const overlaps = [];
    boxes.forEach((a, i) => boxes.slice(i + 1).forEach((b) => {
      if (a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h)
        overlaps.push(`${a.name} [${a.x},${a.y},${a.w},${a.h}] and ${b.name} [${b.x},${b.y},${b.w},${b.h}]`);
    }));
    return overlaps;
  });
}

// The whole graph fitted to the window; and Load Image Networks at 100 %, if the graph has it.
async function photograph(page, name) {
  await page.evaluate(() => window.app.extensionManager?.command?.execute?.("Comfy.Canvas.FitView"));
  await sleep(800);
  await screenshot(page, `${name}_loaded.png`);
  const networks = await page.evaluate(() => {
    const node = window.app.graph.nodes.find((n) => n.type === "EchoDistillLoadImageNetworks");
    if (!node) return false;
    window.app.canvas.ds.scale = 1;
    window.app.canvas.centerOnNode(node);
    window.app.canvas.setDirty(true, true);
    return true;
  });
  if (networks) {
    await sleep(500);
    await screenshot(page, `${name}_image_networks.png`);
  }
}

// The Train node's summary of the run: its text and whether it is on screen inside the node.
async function summaryText(page, nodeId) {
  return page.evaluate((id) => {
    const element = window.app.graph.getNodeById(id)?.widgets?.find((w) => w.name === "summary")?.element;
    if (!element) return { found: false };
    const domWidget = element.closest(".dom-widget");
    const rect = element.getBoundingClientRect();
    return { found: true, className: element.className, text: element.textContent,
             visible: rect.width > 0 && rect.height > 0 && !!domWidget && getComputedStyle(domWidget).display !== "none" };
  }, nodeId);
}

// Pixels of the loss canvas: how many differ from the background, overall and in the plot band
// (between the legend row at the top and the status line at the bottom, where only curves draw).
async function lossCanvas(page, nodeId) {
  return page.evaluate(([id, background]) => {
    const node = window.app.graph.getNodeById(id);
    const widget = node?.widgets?.find((w) => w.name === "losses");
    const canvas = widget?.element;
    if (!canvas) return { found: false };
    const domWidget = canvas.closest(".dom-widget");
    const rect = canvas.getBoundingClientRect();
    const { width, height } = canvas;
    const pixels = canvas.getContext("2d").getImageData(0, 0, width, height).data;
    const dpr = window.devicePixelRatio || 1;
    const top = Math.round(26 * dpr), bottom = height - Math.round(20 * dpr);
    let differ = 0, plot = 0;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const i = 4 * (y * width + x);
        const d = Math.abs(pixels[i] - background[0]) + Math.abs(pixels[i + 1] - background[1]) + Math.abs(pixels[i + 2] - background[2]);
        if (d > 24) { differ++; if (y >= top && y < bottom) plot++; }
      }
    }
    const run = node.echodistill?.run;
    return {
      found: true, className: canvas.className, inDomWidget: !!domWidget, connected: canvas.isConnected,
      visible: rect.width > 0 && rect.height > 0 && !!domWidget && getComputedStyle(domWidget).display !== "none",
      size: [width, height], rect: [Math.round(rect.x), Math.round(rect.y), Math.round(rect.width), Math.round(rect.height)],
      nonBackgroundPixels: differ, plotPixels: plot,
      run: run ? { step: run.step, total: run.total, points: run.points.length, cancelled: run.cancelled ?? null,
                   losses: Object.keys(run.points.at(-1)?.losses ?? {}) } : null,
    };
  }, [nodeId, BACKGROUND]);
}

async function screenshot(page, name, locator = null) {
  const path = join(outDir, name);
  await (locator ?? page).screenshot({ path });
  results.screenshots.push(path);
  log(`screenshot ${path}`);
  return path;
}

async function runFromUi(page, file, workflow) {
  const run = { workflow: file };
  await page.evaluate(([w, name]) => window.app.loadGraphData(w, true, true, name), [workflow, basename(file, ".json")]);
  await sleep(800);
  await closeDialogs(page);
  const trainId = await page.evaluate(() => window.app.graph.nodes.find((n) => n.type === "EchoDistillTrain")?.id ?? null);
  if (!check(trainId !== null, `${file}: no EchoDistillTrain node`)) return run;
  // The Train node in the middle of the view at 100 %, so its DOM widget is on screen.
  await page.evaluate((id) => {
    const canvas = window.app.canvas;
    canvas.ds.scale = 1;
    canvas.centerOnNode(window.app.graph.getNodeById(id));
    canvas.setDirty(true, true);
  }, trainId);
  await sleep(500);
  if (TRAIN_STEPS) {  // fewer steps, set on the node's widget as a user would
    run.steps = await page.evaluate(([id, steps]) => {
      const widget = window.app.graph.getNodeById(id).widgets.find((w) => w.name === "steps");
      widget.value = steps;
      widget.callback?.(steps);
      return widget.value;
    }, [trainId, TRAIN_STEPS]);
    check(run.steps === TRAIN_STEPS, `${file}: could not set the Train node's steps to ${TRAIN_STEPS}`);
  }
  const before = await lossCanvas(page, trainId);
  run.before = before;
  run.summaryBefore = await summaryText(page, trainId);
  check(run.summaryBefore.found && run.summaryBefore.className === "echodistill-summary",
        `${file}: the Train node has no "summary" DOM widget (div.echodistill-summary)`);
  check(before.found, `${file}: the Train node has no "losses" DOM widget with a canvas`);
  check(before.className === "echodistill-losses", `${file}: the losses widget element is not canvas.echodistill-losses`);
  check(before.inDomWidget && before.connected, `${file}: the loss canvas is not attached inside a .dom-widget element`);

  await page.evaluate(() => { window.__probe.events = []; window.__probe.queued = null; });
  const started = Date.now();
  const button = page.locator("button.p-splitbutton-button[aria-label='Run']");
  if (await button.count()) {
    await button.first().click();
    run.queuedWith = "Run button";
  } else {
    await page.evaluate(() => window.app.queuePrompt(0, 1));
    run.queuedWith = "app.queuePrompt(0, 1)";
  }
  await page.waitForFunction(() => window.__probe.queued, null, { timeout: 60000 });
  const queued = await page.evaluate(() => window.__probe.queued);
  run.promptId = queued.prompt_id;
  const nodeErrors = queued.node_errors && Object.keys(queued.node_errors).length ? queued.node_errors : null;
  if (!check(run.promptId && !nodeErrors, `${file}: the server refused the prompt: ${JSON.stringify(queued).slice(0, 1500)}`)) return run;
  log(`${file}: queued with the ${run.queuedWith}, prompt ${run.promptId}`);

  // Mid-run: once a few progress messages have arrived (or later), screenshot the graph.
  let midShot = null;
  let entry = null;
  while (Date.now() - started < RUN_TIMEOUT) {
    const progress = await page.evaluate(() => window.__probe.events.filter((e) => e.type === "echodistill.progress").map((e) => e.detail).at(-1) ?? null);
    if (!midShot && progress && progress.step >= Math.max(3, Math.floor(progress.total / 3)) && progress.step < progress.total) {
      await page.evaluate(() => window.app.canvas.setDirty(true, true));
      await sleep(300);
      run.mid = await lossCanvas(page, trainId);
      run.mid.progress = progress;
      midShot = await screenshot(page, "1_mid_run.png");
      await screenshot(page, "1_mid_run_loss_view.png", page.locator("canvas.echodistill-losses").first());
      log(`${file}: mid-run at step ${progress.step}/${progress.total}, losses ${JSON.stringify(progress.losses)}`);
    }
    const history = await http(`/history/${run.promptId}`);
    entry = history[run.promptId];
    if (entry && ["success", "error"].includes(entry.status?.status_str)) break;
    entry = null;
    await sleep(500);
  }
  run.seconds = Math.round((Date.now() - started) / 1000);
  if (!check(entry, `${file}: no finished /history entry after ${RUN_TIMEOUT / 1000} s`)) return run;
  run.status = entry.status.status_str;
  const messages = entry.status.messages ?? [];
  check(run.status === "success", `${file}: the run ended with ${run.status}: ${JSON.stringify(messages).slice(-2000)}`);
  const events = await page.evaluate(() => window.__probe.events.map((e) => ({ type: e.type, prompt: e.detail?.prompt_id, node: e.detail?.node })));
  run.progressMessages = events.filter((e) => e.type === "echodistill.progress").length;
  run.executionSuccessSeen = events.some((e) => e.type === "execution_success" && e.prompt === run.promptId);
  check(run.progressMessages > 0, `${file}: the browser received no echodistill.progress message`);
  check(midShot, `${file}: no mid-run screenshot (no progress message between a third of the steps and the last)`);
  run.images = Object.values(entry.outputs ?? {}).flatMap((output) => output.images ?? []).length;

  await sleep(1500);  // let the frontend show the output images
  await page.evaluate(() => window.app.canvas.setDirty(true, true));
  run.after = await lossCanvas(page, trainId);
  const after = run.after;
  check(after.found && after.inDomWidget && after.connected, `${file}: after the run the loss canvas is not inside the Train node's DOM widget`);
  check(after.visible, `${file}: the loss canvas is not visible on screen (rect ${after.rect})`);
  check(after.run && after.run.total > 0 && after.run.step === after.run.total,
        `${file}: the live view ends at step ${after.run?.step} of ${after.run?.total}`);
  check(after.run && after.run.points >= 2, `${file}: the live view holds ${after.run?.points} points`);
  check(after.plotPixels > 200 && after.plotPixels > 5 * (before.plotPixels || 0) ,
        `${file}: the loss curves are not drawn: ${after.plotPixels} non-background pixels in the plot band (before the run ${before.plotPixels})`);
  run.summary = await summaryText(page, trainId);
  check(run.summary.visible, `${file}: the run's summary is not visible in the Train node`);
  check(/student loss: adversarial/.test(run.summary.text) && /discriminators: \S/.test(run.summary.text)
        && run.summary.text !== run.summaryBefore.text,
        `${file}: the Train node does not list the run's losses and discriminators: ${JSON.stringify(run.summary.text)}`);
  await screenshot(page, "1_after_run_loss_view.png", page.locator("canvas.echodistill-losses").first());
  await screenshot(page, "1_after_run_train_node.png");
  await page.evaluate(() => window.app.extensionManager?.command?.execute?.("Comfy.Canvas.FitView"));
  await sleep(800);
  await screenshot(page, "1_after_run_fit_view.png");
  log(`${file}: ${run.status} in ${run.seconds} s; ${run.progressMessages} progress messages; loss view `
      + `${after.plotPixels} curve pixels (${before.plotPixels} before), step ${after.run?.step}/${after.run?.total}; `
      + `summary ${JSON.stringify(run.summary.text)}`);
  return run;
}

let crashed = null;
try {
  await main();
} catch (error) {
  crashed = error;
  fail(`test crashed: ${error.stack || error}`);
}
// Console errors and page errors from the pack's extension fail the test, and so does any page error
// while the workflows are loaded, converted and run; the frontend's own at start-up and the failed
// requests of an offline machine (404 for an absent user.css, api.comfy.org look-ups, ...) are reported.
const fromPack = (text) => /\/extensions\/[^/]*echodistill[^/]*\/|echodistill\.js/i.test(text);
results.pageErrors.forEach((error, index) => {
  if (fromPack(error)) fail(`page error from the pack's extension: ${error}`);
  else if (readyPageErrors !== null && index >= readyPageErrors) fail(`page error while handling the workflows: ${error}`);
});
for (const error of results.consoleErrors) if (fromPack(error.location) || fromPack(error.text)) fail(`console error from the pack's extension: ${error.text} (${error.location})`);
results.ok = results.failures.length === 0;
writeFileSync(join(outDir, "results.json"), JSON.stringify(results, null, 2));
if (results.consoleErrors.length) log(`console errors (${results.consoleErrors.length}):`, results.consoleErrors.map((e) => `${e.text} [${e.location}]`).join(" | "));
if (results.pageErrors.length) log(`page errors (${results.pageErrors.length}):`, results.pageErrors.join(" | "));
log(results.ok ? "PASS" : `FAILED: ${results.failures.length} check(s)`);
console.log(JSON.stringify({ ok: results.ok, failures: results.failures, screenshots: results.screenshots,
  workflows: Object.fromEntries(Object.entries(results.workflows).map(([k, v]) => [k, { nodes: v.nodes, promptNodes: v.promptNodes, missingNodeTypes: v.missingNodeTypes, unavailableChoices: v.invalidComboValues }])),
  run: results.run && { workflow: results.run.workflow, steps: results.run.steps ?? "as in the file", status: results.run.status, seconds: results.run.seconds, promptId: results.run.promptId,
    progressMessages: results.run.progressMessages, curvePixelsBefore: results.run.before?.plotPixels, curvePixelsAfter: results.run.after?.plotPixels },
  consoleErrors: results.consoleErrors.length, pageErrors: results.pageErrors.length }));
process.exit(results.ok ? 0 : 1);
