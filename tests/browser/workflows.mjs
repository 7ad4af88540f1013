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
// losses and discriminators (div.echodistill-summary), with screenshots of the Train node mid-run and
// after (1_train_node_mid_run.png, 1_train_node_after_run.png). Every workflow is also checked for
// overlapping nodes, for nodes smaller than their widgets need (clipped), for the missing-model dialog
// naming each model the workflow lists with its folder, and photographed as loaded (<name>_loaded.png,
// and <name>_image_networks.png at 100 % where it has Load Image Networks). The template browser must
// list each workflow once, with its thumbnail (templates.png). Exit code 0 when all checks pass; the
// last line printed is a JSON summary.
//
// Environment: CHROMIUM (default /usr/bin/chromium), ECHODISTILL_RUN_TIMEOUT (seconds, default 900),
// ECHODISTILL_PACK_FOLDER (the pack's folder name in custom_nodes, default comfyui-echodistill),
// ECHODISTILL_RUN_WORKFLOW (file-name prefix of the workflow to run, default "1_"),
// ECHODISTILL_TRAIN_STEPS (the Train node's steps are set to this in the UI before the run, as a user
// would, default 30; "workflow" keeps the file's 300, which takes 3-15 min on 2 busy cores). With a
// number of steps, workflow 1 then runs twice as long, is cancelled from the toolbar a third of the way
// and resumed from the state it kept (1_train_node_cancelled.png, 1_train_node_resumed.png).

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
// How many times slower than an unshared machine this one is: every fixed wait below is that much longer.
const TIME_SCALE = Math.max(1, Number(process.env.ECHODISTILL_TIME_SCALE || 1));
const RUN_PREFIX = process.env.ECHODISTILL_RUN_WORKFLOW ?? "1_";
const PACK_FOLDER = process.env.ECHODISTILL_PACK_FOLDER ?? "comfyui-echodistill";  // its folder in custom_nodes
const TRAIN_STEPS = (process.env.ECHODISTILL_TRAIN_STEPS ?? "30") === "workflow" ? null : Number(process.env.ECHODISTILL_TRAIN_STEPS ?? 30);
const CURVES = [[0x42, 0x87, 0xf5], [0xf5, 0x82, 0x30], [0x5a, 0xbe, 0x5a], [0xb4, 0x5a, 0xc8]]; // web/echodistill.js
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
  "Comfy.Workflow.ShowMissingModelsWarning": true,
  "LiteGraph.Canvas.MinFontSizeForLOD": 0,  // full detail in the zoomed-out screenshot, not grey boxes
  "Comfy.Minimap.Visible": false,  // the graph alone in the screenshots (they make the templates' thumbnails)
  "Comfy.Graph.CanvasInfo": false,
  "Comfy.Graph.CanvasMenu": false,
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
    const context = await browser.newContext({ viewport: { width: 1600, height: 1300 }, deviceScaleFactor: 1 });
    context.setDefaultTimeout(30000 * TIME_SCALE);
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
    }, expected, { timeout: 120000 * TIME_SCALE }).catch(() => log("not every expected node type registered after 120 s"));
    await page.waitForFunction(() => (window.app ?? window.comfyAPI?.app?.app)?.canvas, null, { timeout: 10000 * TIME_SCALE });
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
                          "echodistill.progress", "echodistill.preview", "echodistill.cancelled"]) {
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
    results.templates = await templates(page, PACK_FOLDER, files);
    results.presetRates = await presetFillsRates(page, objectInfo);
    results.newSeeds = await newNodesSeedsFixed(page);
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
    .map((dialog) => dialog.innerText.trim().replace(/\s+/g, " ").slice(0, 2000)));
}

async function loadAndConvert(page, file, workflow, objectInfo) {
  await closeDialogs(page);
  await page.evaluate(() => { window.__probe.missing = null; });
  const errorsBefore = results.pageErrors.length;
  await page.evaluate(([w, name]) => window.app.loadGraphData(w, true, true, name), [workflow, basename(file, ".json")]);
  await page.waitForFunction(() => window.__probe.missing !== null, null, { timeout: 30000 * TIME_SCALE });
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
  check(!dialogs.some((text) => /Some Nodes Are Missing/i.test(text)), `${file}: a missing-nodes dialog is open: ${dialogs}`);
  // The test server has none of the models a workflow lists: ComfyUI's dialog must name each, in its folder.
  const missingModels = dialogs.find((text) => /Missing Models/.test(text)) ?? "";
  result.missingModelsDialog = missingModels;
  for (const model of workflow.models ?? [])
    check(missingModels.includes(`${model.directory} / ${model.name}`),
          `${file}: the missing-model dialog does not offer ${model.directory} / ${model.name}: ${JSON.stringify(dialogs)}`);
  if (!(workflow.models ?? []).length) check(!missingModels, `${file}: a missing-model dialog for a workflow that needs no download`);
  if (missingModels) await screenshot(page, `${basename(file, ".json")}_missing_models.png`);
  await closeDialogs(page);
  for (const node of state.nodes) if (node.invalidCombos.length) result.invalidComboValues[`${node.id}:${node.type}`] = node.invalidCombos;
  if (file.startsWith(RUN_PREFIX)) {
    check(!Object.keys(result.invalidComboValues).length,
          `${file}: combo values not offered by the server: ${JSON.stringify(result.invalidComboValues)}`);
  }
  if (results.pageErrors.length > errorsBefore) result.pageErrors = results.pageErrors.slice(errorsBefore);
  result.overlaps = await overlappingNodes(page);
  check(!result.overlaps.length, `${file}: nodes overlap: ${result.overlaps.join("; ")}`);
  result.clipped = await clippedNodes(page);
  check(!result.clipped.length, `${file}: nodes smaller than their widgets need: ${result.clipped.join("; ")}`);
  result.titles = await page.evaluate(() => window.app.graph.nodes.map((n) => `${n.id}:${n.title}`));
  result.groups = await page.evaluate(() => window.app.graph.groups.map((g) => g.title));
  check(result.groups.length >= 2, `${file}: no groups: ${result.groups}`);
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

// Nodes whose size is below what the frontend computes for their inputs, outputs and widgets.
async function clippedNodes(page) {
  return page.evaluate(() => window.app.graph.nodes.filter((node) => !node.isVirtualNode).flatMap((node) => {
    const [width, height] = node.computeSize();
    return node.size[0] + 1 < width || node.size[1] + 1 < height
      ? [`${node.id}:${node.type} is ${node.size.map(Math.round)}, needs ${[width, height].map(Math.round)}`] : [];
  }));
}

// The whole graph fitted to the window; and Load Image Networks at 100 %, if the graph has it.
async function photograph(page, name) {
  await page.mouse.move(800, 1290);  // no tooltip of the Run button over the graph
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

// The loss canvas: where it is, and how many of its pixels have a curve's colour (smoothed curves; the
// faint raw values are mixed into the background and do not count).
async function lossCanvas(page, nodeId) {
  return page.evaluate(([id, curves]) => {
    const node = window.app.graph.getNodeById(id);
    const canvas = node?.widgets?.find((w) => w.name === "losses")?.element;
    if (!canvas) return { found: false };
    const domWidget = canvas.closest(".dom-widget");
    const rect = canvas.getBoundingClientRect();
    const { width, height } = canvas;
    const pixels = canvas.getContext("2d").getImageData(0, 0, width, height).data;
    let curvePixels = 0;
    for (let i = 0; i < pixels.length; i += 4) {
      if (curves.some((c) => Math.abs(pixels[i] - c[0]) + Math.abs(pixels[i + 1] - c[1]) + Math.abs(pixels[i + 2] - c[2]) < 40)) curvePixels++;
    }
    const run = node.echodistill?.run;
    return {
      found: true, className: canvas.className, inDomWidget: !!domWidget, connected: canvas.isConnected,
      visible: rect.width > 0 && rect.height > 0 && !!domWidget && getComputedStyle(domWidget).display !== "none",
      size: [width, height], rect: [Math.round(rect.x), Math.round(rect.y), Math.round(rect.width), Math.round(rect.height)],
      curvePixels,
      run: run ? { step: run.step, total: run.total, points: run.points.length, echoStart: run.echoStart,
                   cancelled: run.cancelled ?? null, losses: Object.keys(run.points.at(-1)?.losses ?? {}) } : null,
    };
  }, [nodeId, CURVES]);
}

// The previews shown in the Train node: their label, real sizes, shown sizes and prompts.
async function previewsShown(page, nodeId) {
  return page.evaluate((id) => {
    const element = window.app.graph.getNodeById(id)?.widgets?.find((w) => w.name === "previews")?.element;
    if (!element) return { found: false };
    const images = [...element.querySelectorAll("img")];
    return { found: true, label: element.querySelector(".echodistill-preview-label")?.textContent ?? element.textContent,
             images: images.map((img) => ({ natural: [img.naturalWidth, img.naturalHeight], shown: [img.width, img.height],
                                            prompt: img.title, rendering: img.style.imageRendering })) };
  }, nodeId);
}

// The Train node on screen, title bar included: its screenshot's clip rectangle.
async function nodeClip(page, nodeId) {
  return page.evaluate((id) => {
    const canvas = window.app.canvas, node = window.app.graph.getNodeById(id);
    const rect = canvas.canvas.getBoundingClientRect(), { scale, offset } = canvas.ds;
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    const x = rect.x + (node.pos[0] + offset[0]) * scale - 4, y = rect.y + (node.pos[1] - title + offset[1]) * scale - 4;
    return { x: Math.max(x, 0), y: Math.max(y, 0), width: node.size[0] * scale + 8, height: (node.size[1] + title) * scale + 8 };
  }, nodeId);
}

// The Train node at 100 %, its top at the top of the window.
async function showNode(page, nodeId) {
  await page.evaluate((id) => {
    const canvas = window.app.canvas, node = window.app.graph.getNodeById(id);
    canvas.ds.scale = 1;
    canvas.ds.offset = [40 - node.pos[0], 60 - node.pos[1]];
    canvas.setDirty(true, true);
  }, nodeId);
  await sleep(500);
}

async function screenshot(page, name, clip = null) {
  const path = join(outDir, name);
  await page.screenshot({ path, ...(clip ? { clip } : {}) });
  results.screenshots.push(path);
  log(`screenshot ${path}`);
  return path;
}

async function runFromUi(page, file, workflow) {
  const run = { workflow: file };
  await page.evaluate(([w, name]) => window.app.loadGraphData(w, true, true, name), [workflow, basename(file, ".json")]);
  await sleep(800);
  await closeDialogs(page);
  const ids = await page.evaluate(() => Object.fromEntries(window.app.graph.nodes.map((n) => [n.type, n.id])));
  const trainId = ids.EchoDistillTrain ?? null, saveId = ids.EchoDistillSavePersonalized ?? null;
  if (!check(trainId !== null, `${file}: no EchoDistillTrain node`)) return run;
  await showNode(page, trainId);  // the Train node at 100 %, so its DOM widgets are on screen
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
  await screenshot(page, "1_train_node_before_run.png", await nodeClip(page, trainId));

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
  await page.waitForFunction(() => window.__probe.queued, null, { timeout: 60000 * TIME_SCALE });
  const queued = await page.evaluate(() => window.__probe.queued);
  run.promptId = queued.prompt_id;
  const nodeErrors = queued.node_errors && Object.keys(queued.node_errors).length ? queued.node_errors : null;
  if (!check(run.promptId && !nodeErrors, `${file}: the server refused the prompt: ${JSON.stringify(queued).slice(0, 1500)}`)) return run;
  log(`${file}: queued with the ${run.queuedWith}, prompt ${run.promptId}`);

  // Mid-run: once a third of the steps are done (and before the last), photograph the Train node.
  let midShot = null;
  let entry = null;
  while (Date.now() - started < RUN_TIMEOUT) {
    const progress = await page.evaluate(() => window.__probe.events.filter((e) => e.type === "echodistill.progress").map((e) => e.detail).at(-1) ?? null);
    if (!midShot && progress && progress.step >= Math.max(3, Math.floor(progress.total / 3)) && progress.step < progress.total) {
      await page.evaluate(() => window.app.canvas.setDirty(true, true));
      await sleep(300);
      run.mid = await lossCanvas(page, trainId);
      run.mid.progress = progress;
      run.mid.previews = await previewsShown(page, trainId);
      midShot = await screenshot(page, "1_train_node_mid_run.png", await nodeClip(page, trainId));
      await screenshot(page, "1_mid_run.png");
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
  const events = await page.evaluate(() => window.__probe.events.map((e) => ({ type: e.type, prompt: e.detail?.prompt_id, node: e.detail?.node, step: e.detail?.step })));
  run.progressMessages = events.filter((e) => e.type === "echodistill.progress").length;
  run.previewSteps = events.filter((e) => e.type === "echodistill.preview").map((e) => e.step);
  run.executionSuccessSeen = events.some((e) => e.type === "execution_success" && e.prompt === run.promptId);
  check(run.progressMessages > 0, `${file}: the browser received no echodistill.progress message`);
  check(run.previewSteps[0] === 1, `${file}: the first preview came at step ${run.previewSteps[0]}, not 1`);
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
  check(after.run && after.run.points === after.run.total, `${file}: the live view holds ${after.run?.points} points`);
  check(after.curvePixels > 300 && (before.curvePixels ?? 0) < 20,
        `${file}: the loss curves are not drawn: ${after.curvePixels} pixels of curve colour (${before.curvePixels} before the run)`);
  run.previews = await previewsShown(page, trainId);
  const shown = run.previews.images ?? [];
  check(shown.length === 3 && shown.every((image) => image.natural[0] === 32 && image.shown[0] >= 96
        && image.rendering === "pixelated") && /32 × 32 px/.test(run.previews.label),
        `${file}: the previews are not the 3 prompts' 32 px images shown enlarged and labelled: ${JSON.stringify(run.previews)}`);
  run.summary = await summaryText(page, trainId);
  const echoFrom = Number(/echo: from step (\d+)/.exec(run.summary.text)?.[1]);
  check(echoFrom > 1 && after.run?.echoStart === echoFrom, `${file}: the view marks the echo from step ${after.run?.echoStart}, the run says ${echoFrom}`);
  check(run.summary.visible, `${file}: the run's summary is not visible in the Train node`);
  check(/student loss: adversarial/.test(run.summary.text) && /discriminators: \S/.test(run.summary.text)
        && /result saved as .*\.safetensors/.test(run.summary.text),
        `${file}: the Train node does not list the run's losses, discriminators and result: ${JSON.stringify(run.summary.text)}`);
  await screenshot(page, "1_train_node_after_run.png", await nodeClip(page, trainId));
  await screenshot(page, "1_training_view_after_run.png", await page.evaluate((id) => {  // curves and previews
    const widgets = window.app.graph.getNodeById(id).widgets;
    const [top, bottom] = ["losses", "previews"].map((name) => widgets.find((w) => w.name === name).element.getBoundingClientRect());
    return { x: top.x, y: top.y, width: top.width, height: bottom.bottom - top.y };
  }, trainId));
  if (check(saveId !== null, `${file}: no Save Personalized node`)) {
    run.saved = await page.evaluate((id) => window.app.graph.getNodeById(id).widgets.find((w) => w.name === "saved")?.element?.textContent ?? null, saveId);
    const classWord = await page.evaluate(() => window.app.graph.nodes.find((n) => n.type === "EchoDistillConceptImages")
      ?.widgets.find((w) => w.name === "class_word")?.value);  // the embedding is used before the concept's class word
    check(/^LoRA: \S+\.safetensors in \/.*loras/m.test(run.saved ?? "")
          && new RegExp(`embedding:\\S+ ${classWord}$`, "m").test(run.saved ?? ""),
          `${file}: Save Personalized does not list what it wrote and where: ${JSON.stringify(run.saved)}`);
    await showNode(page, saveId);
    await screenshot(page, "1_save_node_after_run.png", await nodeClip(page, saveId));
  }
  await page.evaluate(() => window.app.extensionManager?.command?.execute?.("Comfy.Canvas.FitView"));
  await sleep(800);
  await screenshot(page, "1_after_run_fit_view.png");
  if (TRAIN_STEPS) run.cancelAndResume = await cancelAndResume(page, file, trainId, 2 * TRAIN_STEPS);
  log(`${file}: ${run.status} in ${run.seconds} s; ${run.progressMessages} progress messages, previews at ${run.previewSteps}; `
      + `loss view ${after.curvePixels} curve pixels (${before.curvePixels} before), step ${after.run?.step}/${after.run?.total}; `
      + `summary ${JSON.stringify(run.summary.text)}; saved ${JSON.stringify(run.saved)}`);
  return run;
}

// Click Run and wait for the server's answer; the prompt id, or null (a check failed).
async function clickRun(page, file) {
  await page.evaluate(() => { window.__probe.events = []; window.__probe.queued = null; });
  await page.locator("button.p-splitbutton-button[aria-label='Run']").first().click();
  await page.waitForFunction(() => window.__probe.queued, null, { timeout: 60000 });
  const queued = await page.evaluate(() => window.__probe.queued);
  const errors = queued.node_errors && Object.keys(queued.node_errors).length;
  return check(queued.prompt_id && !errors, `${file}: the server refused the prompt: ${JSON.stringify(queued).slice(0, 1500)}`)
    ? queued.prompt_id : null;
}

async function finished(promptId) {
  for (const started = Date.now(); Date.now() - started < RUN_TIMEOUT; await sleep(500)) {
    const entry = (await http(`/history/${promptId}`))[promptId];
    if (entry && ["success", "error"].includes(entry.status?.status_str)) return entry;
  }
  return null;
}

// As an artist would: a longer run, cancelled from the toolbar part-way; the Train node says where its
// state is; the page refreshed, the state chosen as resume_state, Run again: the run ends where the
// longer one would, the view holding every step, the cancelled ones included.
async function cancelAndResume(page, file, trainId, steps) {
  const result = { steps };
  await showNode(page, trainId);
  await page.evaluate(([id, value]) => {
    const widget = window.app.graph.getNodeById(id).widgets.find((w) => w.name === "steps");
    widget.value = value;
  }, [trainId, steps]);
  const promptId = await clickRun(page, file);
  if (!promptId) return result;
  await page.waitForFunction((count) => window.__probe.events.some((e) => e.type === "echodistill.progress" && e.detail.step >= count),
                             Math.ceil(steps / 3), { timeout: RUN_TIMEOUT });
  await page.locator("button[aria-label='Cancel current run']").first().click();
  await page.waitForFunction(() => window.__probe.events.some((e) => e.type === "echodistill.cancelled"), null, { timeout: 120000 })
    .catch(() => null);
  const cancelled = await page.evaluate(() => window.__probe.events.find((e) => e.type === "echodistill.cancelled")?.detail ?? null);
  result.cancelled = cancelled;
  result.cancelledStatus = (await finished(promptId))?.status?.status_str;
  await sleep(500);
  await screenshot(page, "1_train_node_cancelled.png", await nodeClip(page, trainId));
  if (!check(cancelled?.state, `${file}: Cancel did not report a kept state: ${JSON.stringify(cancelled)}`)) return result;
  result.view = await lossCanvas(page, trainId);
  check(result.view.run?.cancelled?.state === cancelled.state, `${file}: the Train node does not show the cancelled run's state`);

  await page.evaluate(() => window.app.refreshComboInNodes());  // as the R key does: the new state is listed
  await sleep(1000);
  result.resumeChoice = await page.evaluate(([id, state]) => {
    const widget = window.app.graph.getNodeById(id).widgets.find((w) => w.name === "resume_state");
    if (!widget.options.values.includes(state)) return null;
    widget.value = state;
    return widget.value;
  }, [trainId, cancelled.state]);
  if (!check(result.resumeChoice === cancelled.state, `${file}: the state ${cancelled.state} is not offered as resume_state`)) return result;
  const resumedId = await clickRun(page, file);
  if (!resumedId) return result;
  const entry = await finished(resumedId);
  result.resumedStatus = entry?.status?.status_str;
  check(result.resumedStatus === "success", `${file}: the resumed run ended with ${result.resumedStatus}`);
  await sleep(1000);
  result.after = await lossCanvas(page, trainId);
  check(result.after.run?.step === steps && result.after.run?.points === steps,
        `${file}: the resumed view holds ${result.after.run?.points} points up to step ${result.after.run?.step}, not all ${steps}`);
  await screenshot(page, "1_train_node_resumed.png", await nodeClip(page, trainId));
  await page.evaluate((id) => { window.app.graph.getNodeById(id).widgets.find((w) => w.name === "resume_state").value = "none (start fresh)"; }, trainId);
  log(`${file}: cancelled at step ${cancelled.step} (state ${cancelled.state}, ${result.cancelledStatus}); resumed to ${result.after.run?.step}: ${result.resumedStatus}`);
  return result;
}

// A node placed anew (as from the node search) has its seed control at "fixed", not the frontend's "randomize":
// queued again, the graph trains and draws the same (new_train_node_seed.png shows the Train node's widgets).
async function newNodesSeedsFixed(page) {
  await page.evaluate(() => window.app.graph.clear());
  const seeds = {};
  for (const type of ["EchoDistillTrain", "EchoDistillOneStepSample", "EchoDistillTeacherSample"]) {
    const id = await page.evaluate((type) => {
      const node = LiteGraph.createNode(type);
      node.pos = [100, 100];
      window.app.graph.add(node);
      return node.id;
    }, type);
    await showNode(page, id);
    seeds[type] = await page.evaluate((id) => {
      const widgets = window.app.graph.getNodeById(id).widgets;
      const seed = widgets.findIndex((w) => w.name === "seed");
      return { control: widgets.find((w) => w.name === "control_after_generate")?.value ?? null,
               next: widgets[seed + 1]?.name, seed: widgets[seed]?.value };
    }, id);
    check(seeds[type].control === "fixed" && seeds[type].next === "control_after_generate",
          `a new ${type}'s seed control reads ${JSON.stringify(seeds[type])}, not "fixed" right after the seed`);
    if (type === "EchoDistillTrain") {
      const clip = await nodeClip(page, id);
      await screenshot(page, "new_train_node_seed.png", { ...clip, height: Math.min(clip.height, 520) });
    }
    await page.evaluate((id) => window.app.graph.remove(window.app.graph.getNodeById(id)), id);
  }
  log(`new nodes' seed controls: ${JSON.stringify(seeds)}`);
  return seeds;
}

// A new Train node shows 0 (the preset's) steps and rates; choosing a preset shows that preset's own, and
// choosing auto again puts back 0 (auto's preset depends on the models).
async function presetFillsRates(page, objectInfo) {
  const FILLED = ["steps", "teacher_lr", "student_lr"];
  const shown = await page.evaluate((FILLED) => {
    const node = LiteGraph.createNode("EchoDistillTrain");
    window.app.graph.add(node);
    const widget = (name) => node.widgets.find((w) => w.name === name);
    const values = () => FILLED.map((name) => widget(name).value);
    const fresh = values();
    const chosen = {};
    for (const preset of ["paper", "tiny", "auto"]) {
      widget("preset").value = preset;
      widget("preset").callback(preset);
      chosen[preset] = values();
    }
    window.app.graph.remove(node);
    return { fresh, chosen };
  }, FILLED);
  const inputs = { ...objectInfo.EchoDistillTrain.input.required, ...objectInfo.EchoDistillTrain.input.optional };
  check(JSON.stringify(shown.fresh) === JSON.stringify([0, 0, 0]), `a new Train node shows ${shown.fresh}, not 0, 0, 0`);
  for (const preset of ["paper", "tiny", "auto"]) {
    const expected = FILLED.map((name) => inputs[name][1].echodistill_presets[preset]);
    check(JSON.stringify(shown.chosen[preset]) === JSON.stringify(expected),
          `choosing the ${preset} preset shows steps and rates ${shown.chosen[preset]}, not ${expected}`);
  }
  check(JSON.stringify(shown.chosen.auto) === JSON.stringify([0, 0, 0]),
        `choosing auto shows ${shown.chosen.auto}, not 0 (the preset's)`);
  return shown;
}

// The template browser: each workflow of the pack once, each card with its thumbnail.
async function templates(page, packFolder, files) {
  const listed = await http("/workflow_templates");
  const names = listed[packFolder] ?? [];
  const expected = files.map((f) => basename(f, ".json")).sort();
  check(JSON.stringify([...names].sort()) === JSON.stringify(expected),
        `/workflow_templates lists ${JSON.stringify(names)} for ${packFolder}, expected each of ${JSON.stringify(expected)} once`);
  for (const name of expected) {
    const response = await fetch(`${base}/api/workflow_templates/${packFolder}/${name}.jpg`);
    check(response.ok && /image\/jpeg/.test(response.headers.get("content-type") ?? ""),
          `no thumbnail ${name}.jpg for the template card (HTTP ${response.status})`);
  }
  await page.evaluate(() => window.app.extensionManager?.command?.execute?.("Comfy.BrowseTemplates"));
  await sleep(1500);
  const category = page.getByText(packFolder, { exact: true }).first();
  if (await category.count()) { await category.click(); await sleep(1500); }
  const cards = await page.evaluate(() => [...document.querySelectorAll(".template-card")].map((card) => ({
    title: card.querySelector("h3")?.textContent?.trim(),
    images: [...card.querySelectorAll("img")].map((img) => ({ src: img.src, loaded: img.complete && img.naturalWidth > 0 })) })));
  const ours = cards.filter((card) => expected.includes(card.title));
  check(ours.length === expected.length && ours.every((card) => card.images.some((img) => img.loaded)),
        `the template browser does not show each workflow once with its thumbnail: ${JSON.stringify(cards).slice(0, 1500)}`);
  await screenshot(page, "templates.png");
  await closeDialogs(page);
  return { listed: names, cards: ours };
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
