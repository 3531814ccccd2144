// Drives the real ComfyUI page in Debian's Chromium with playwright-core, as a user would, and writes what it
// saw to a JSON report (tests/comfy/test_browser.py starts the server, runs this and asserts on the report).
//
//   node tests/browser/ui_check.mjs --url http://127.0.0.1:PORT --out DIR --checkpoint NAME [--mode test|thumbnails]
//
// mode test: open the page; load extract_and_generate from the template browser; shrink it (fixture checkpoint,
// 64 px, a few training steps); run it; watch the trainer's live view (chart points growing, maps with labels);
// reload mid-training and see the view come back; wait for the end; click a handle chip of the Concept Prompt
// Encoder and read the prompt. Screenshots go to DIR; every console message of type error and every page
// error is recorded. Nothing is asserted here except that the page could be driven at all.
// mode thumbnails: load each example workflow and screenshot the graph (scripts/make_thumbnails.py).
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const args = Object.fromEntries(process.argv.slice(2).reduce((pairs, arg, i, all) => {
  if (arg.startsWith("--")) pairs.push([arg.slice(2), all[i + 1]]);
  return pairs;
}, []));
const URL_ = args.url;
const OUT = args.out;
const MODE = args.mode ?? "test";
const PACK_FOLDER = args.pack ?? "ComfyUI-Break-A-Scene";
const CHROMIUM = process.env.BAS_CHROMIUM ?? "/usr/bin/chromium";
const TRAIN = { phase1_steps: Number(args.phase1 ?? 4), phase2_steps: Number(args.phase2 ?? 2) };
fs.mkdirSync(OUT, { recursive: true });

const report = { console: [], pageErrors: [], steps: [], screenshots: [], thumbnailResponses: [], failed: null };
const log = (step, data = {}) => {
  report.steps.push({ step, t: Date.now(), ...data });
  console.log(`[ui_check] ${step} ${JSON.stringify(data).slice(0, 300)}`);
};
const save = () => fs.writeFileSync(path.join(OUT, "report.json"), JSON.stringify(report, null, 2));

async function shot(page, name) {
  const file = path.join(OUT, `${name}.png`);
  await page.screenshot({ path: file });
  report.screenshots.push(file);
}

async function waitFor(page, fn, arg, timeout = 60000, what = "condition") {
  try {
    return await page.waitForFunction(fn, arg, { timeout, polling: 100 });
  } catch (error) {
    throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
  }
}

async function openPage(page) {
  await page.goto(URL_, { waitUntil: "domcontentloaded" });
  await waitFor(page, () => window.app?.graph && window.app?.extensionManager && document.querySelector("canvas"),
    null, 90000, "the ComfyUI app");
  await waitFor(page, () => (window.app.extensions ?? []).some((e) => e.name === "BreakAScene.LiveView"),
    null, 30000, "the pack's extensions");
  await page.waitForTimeout(1500);
  // a fresh user gets the template browser on the first visit: close it (and any other dialog)
  for (let i = 0; i < 3 && await page.locator(".p-dialog").count(); i++) {
    await page.keyboard.press("Escape");
    await page.waitForTimeout(400);
  }
}

// Focus one node at scale 1 so its DOM widgets are on screen.
async function centerOn(page, type) {
  await page.evaluate((type) => {
    const node = window.app.graph._nodes.find((n) => n.comfyClass === type);
    const canvas = window.app.canvas;
    canvas.ds.scale = 1;
    canvas.centerOnNode(node);
    canvas.setDirty(true, true);
  }, type);
  await page.waitForTimeout(500);
}

async function loadTemplate(page, name) {
  await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.BrowseTemplates"));
  const dialog = page.locator("[data-testid='template-workflows-content']");
  await dialog.waitFor({ timeout: 30000 });
  await page.getByText(PACK_FOLDER, { exact: false }).first().click();
  await page.waitForTimeout(800);
  await shot(page, "02-template-browser");
  const card = dialog.getByText(name, { exact: true }).first();
  await card.waitFor({ timeout: 15000 });
  await card.scrollIntoViewIfNeeded();
  await page.waitForTimeout(1500);                   // the cards load their images when they are in view
  await shot(page, "02-template-card");
  // the frontend fetches the thumbnail and shows it from memory: check the response and the card's picture
  const thumbnail = await page.evaluate((name) => {
    let card = [...document.querySelectorAll("*")].find((e) => e.childElementCount === 0 && e.textContent.trim() === name);
    while (card && !card.querySelector("img")) card = card.parentElement;
    const img = card?.querySelector("img");
    return img ? { complete: img.complete, width: img.naturalWidth, height: img.naturalHeight } : {};
  }, name);
  thumbnail.responses = report.thumbnailResponses.filter((r) => r.url.endsWith(`/${name}.jpg`));
  log("template card", { thumbnail });
  report.thumbnail = thumbnail;
  await card.click();
  await waitFor(page, () => window.app.graph._nodes.some((n) => n.comfyClass === "BreakASceneTrainer"),
    null, 30000, "the template's nodes");
  await page.waitForTimeout(1000);
}

function setWidgets(page, type, values) {
  return page.evaluate(([type, values]) => {
    for (const node of window.app.graph._nodes.filter((n) => n.comfyClass === type)) {
      for (const [name, value] of Object.entries(values)) {
        const widget = node.widgets.find((w) => w.name === name);
        if (!widget) throw new Error(`${type} has no widget ${name}`);
        widget.value = value;
        widget.callback?.(value);
      }
    }
    window.app.graph.setDirtyCanvas(true, true);
  }, [type, values]);
}

function liveState(page) {
  return page.evaluate(() => {
    const root = document.querySelector(".bas-live");
    if (!root) return null;
    const visible = root.offsetParent !== null;
    return {
      visible,
      run: root.dataset.run,
      phase: root.dataset.phase,
      status: root.querySelector(".bas-live-status")?.textContent ?? "",
      points: Number(root.querySelector(".bas-live-chart")?.dataset.points ?? 0),
      labels: [...root.querySelectorAll(".bas-live-label")].map((e) => ({ text: e.textContent, color: e.style.color })),
      maps: [...root.querySelectorAll(".bas-live-map")].map((c) => ({ drawn: c.dataset.drawn ?? "", w: c.width, h: c.height })),
    };
  });
}

function maskInputs(page) {
  return page.evaluate(() => {
    const node = window.app.graph._nodes.find((n) => n.comfyClass === "MaskedConceptLoader");
    return node.inputs.filter((i) => /^mask_\d+$/.test(i.name)).map((i) => ({ name: i.name, linked: i.link != null }));
  });
}

async function queue(page) {
  const before = await page.evaluate(() => window.app.graph._nodes.length);
  await page.evaluate(() => window.app.extensionManager.command.execute("Comfy.QueuePrompt"));
  log("queued", { nodes: before });
}

async function runTest(page) {
  await openPage(page);
  await shot(page, "01-default-graph");
  await loadTemplate(page, "extract_and_generate");
  await shot(page, "03-template-loaded");
  report.maskInputsLoaded = await maskInputs(page);

  await setWidgets(page, "CheckpointLoaderSimple", { ckpt_name: args.checkpoint });
  await setWidgets(page, "BreakASceneTrainer", { ...TRAIN, resolution: 64, lora_rank: 4 });
  await setWidgets(page, "EmptyLatentImage", { width: 64, height: 64, batch_size: 1 });
  await setWidgets(page, "KSampler", { steps: 2 });
  await centerOn(page, "BreakASceneTrainer");
  report.liveBefore = await liveState(page);
  await queue(page);

  // the chart gains points while training
  // generous: the first steps include converting the model, and a shared machine may be slow
  await waitFor(page, () => Number(document.querySelector(".bas-live-chart")?.dataset.points ?? 0) >= 2,
    null, 1200000, "the first chart points");
  const first = await liveState(page);
  await waitFor(page, (n) => Number(document.querySelector(".bas-live-chart")?.dataset.points ?? 0) > n,
    first.points, 900000, "more chart points");
  const second = await liveState(page);
  report.training = { first, second };
  await waitFor(page, () => [...document.querySelectorAll(".bas-live-map")].some((c) => c.dataset.drawn === "map"),
    null, 900000, "the attention maps");
  await page.waitForTimeout(300);
  report.training.withMaps = await liveState(page);
  await shot(page, "04-training");

  // reload mid-training: the view comes back at the next message
  const beforeReload = await liveState(page);
  report.reload = { before: beforeReload };
  await page.reload({ waitUntil: "domcontentloaded" });
  await openPage(page);
  await waitFor(page, () => window.app.graph._nodes.some((n) => n.comfyClass === "BreakASceneTrainer"),
    null, 30000, "the restored workflow");
  await centerOn(page, "BreakASceneTrainer");
  report.reload.restored = await liveState(page);
  await waitFor(page, () => Number(document.querySelector(".bas-live-chart")?.dataset.points ?? 0) > 0,
    null, 900000, "the live view after the reload");
  report.reload.after = await liveState(page);
  await shot(page, "05-after-reload");

  await waitFor(page, () => document.querySelector(".bas-live")?.dataset.phase === "done", null, 1800000,
    "the end of training");
  await page.waitForTimeout(500);
  report.done = await liveState(page);
  await shot(page, "06-trained");
  // the rest of the workflow (export, sampling) finishes
  for (let waited = 0; ; waited += 1000) {
    const queue = await page.evaluate(async () => (await fetch("/api/queue")).json());
    if (!queue.queue_running.length && !queue.queue_pending.length) break;
    if (waited > 1200000) throw new Error("timed out waiting for the prompt to finish");
    await page.waitForTimeout(1000);
  }
  report.history = await page.evaluate(async () => {
    const history = await (await fetch("/api/history?max_items=5")).json();
    return Object.values(history).map((entry) => entry.status?.status_str);
  });

  // chips of the prompt encoder
  await centerOn(page, "ConceptPromptEncoder");
  const encoder = page.locator(".bas-chips").first();
  await encoder.dispatchEvent("pointerenter");
  await waitFor(page, () => Number(document.querySelector(".bas-chips")?.dataset.count ?? 0) > 0, null, 30000,
    "the handle chips");
  report.chips = await page.evaluate(() => [...document.querySelector(".bas-chips").querySelectorAll(".bas-chip")]
    .map((c) => ({ token: c.dataset.token, text: c.textContent, color: c.style.color })));
  // put the cursor after "an oil painting of " and click the second chip
  const textarea = await page.evaluate(() => {
    const node = window.app.graph._nodes.find((n) => n.comfyClass === "ConceptPromptEncoder" && n.basChips === document.querySelector(".bas-chips"));
    const widget = node.widgets.find((w) => w.name === "text");
    const element = widget.inputEl ?? widget.element;
    const marker = "an oil painting of ";
    const at = element.value.indexOf(marker) + marker.length;
    element.focus();
    element.setSelectionRange(at, at);
    return { before: element.value, at };
  });
  await page.locator(".bas-chips .bas-chip").nth(1).click();
  await page.waitForTimeout(300);
  report.chipInsert = {
    ...textarea,
    after: await page.evaluate(() => {
      const node = window.app.graph._nodes.find((n) => n.comfyClass === "ConceptPromptEncoder" && n.basChips === document.querySelector(".bas-chips"));
      return node.widgets.find((w) => w.name === "text").value;
    }),
  };
  await shot(page, "07-chips");

  // a mask input appears when the last one is connected; one less when it is disconnected
  report.maskInputs = await page.evaluate(() => {
    const graph = window.app.graph;
    const loader = graph._nodes.find((n) => n.comfyClass === "MaskedConceptLoader");
    const names = () => loader.inputs.filter((i) => /^mask_\d+$/.test(i.name)).map((i) => i.name);
    const maskSource = graph._nodes.find((n) => n.comfyClass === "LoadImageMask");
    const out = { start: names() };
    const free = loader.inputs.findIndex((i) => i.name === `mask_${out.start.length - 1}`);
    maskSource.connect(0, loader, free);
    return new Promise((resolve) => setTimeout(() => {
      out.connected = names();
      loader.disconnectInput(loader.inputs.findIndex((i) => i.name === `mask_${out.start.length - 1}`));
      setTimeout(() => {
        out.disconnected = names();
        resolve(out);
      }, 100);
    }, 100));
  });
  await centerOn(page, "MaskedConceptLoader");
  await shot(page, "08-mask-inputs");

  // a graph without any of this pack's nodes: no errors either
  await page.evaluate(() => window.app.graph.clear());
  await page.waitForTimeout(500);
}

async function runThumbnails(page) {
  await openPage(page);
  // the graph only: no minimap over it
  await page.evaluate(() => window.app.extensionManager.setting.set("Comfy.Minimap.Visible", false)).catch(() => {});
  const names = JSON.parse(args.workflows);
  for (const name of names) {
    const workflow = JSON.parse(fs.readFileSync(path.join(args.dir, `${name}.json`), "utf8"));
    await page.evaluate(async (workflow) => {
      await window.app.loadGraphData(workflow, true, true, null);
    }, workflow);
    await page.waitForTimeout(800);
    // centre on the workflow's main node at a zoom where the nodes are drawn with their text
    const focus = JSON.parse(args.focus ?? "{}")[name];
    await page.evaluate((focus) => {
      const canvas = window.app.canvas;
      const node = window.app.graph._nodes.find((n) => n.comfyClass === focus) ?? window.app.graph._nodes[0];
      canvas.ds.scale = 0.8;
      canvas.centerOnNode(node);
      canvas.setDirty(true, true);
    }, focus);
    await page.waitForTimeout(800);
    const box = await page.evaluate(() => {
      const r = window.app.canvas.canvas.getBoundingClientRect();
      // clear of the side bar (left), the tab and menu bars (top) and the canvas tools (bottom)
      const side = Math.min(r.width - 70, r.height - 150);
      return { x: r.x + 70 + (r.width - 70 - side) / 2, y: r.y + 80, width: side, height: side };
    });
    const file = path.join(OUT, `${name}.png`);
    await page.screenshot({ path: file, clip: box });
    report.screenshots.push(file);
    log("thumbnail", { name });
  }
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  // thumbnails: a square page, the template browser shows them in square cards
  const viewport = MODE === "thumbnails" ? { width: 1100, height: 1100 } : { width: 1600, height: 1000 };
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on("console", (message) => {
    if (message.type() === "error") {
      report.console.push({ text: message.text(), url: message.location()?.url ?? "" });
    }
  });
  page.on("pageerror", (error) => report.pageErrors.push({ text: String(error), stack: error.stack ?? "" }));
  page.on("response", (response) => {
    if (response.url().includes("/workflow_templates/") && response.url().endsWith(".jpg")) {
      report.thumbnailResponses.push({ url: response.url(), status: response.status(),
        type: response.headers()["content-type"] ?? "" });
    }
  });
  if (MODE === "thumbnails") await runThumbnails(page);
  else await runTest(page);
  await shot(page, "99-end").catch(() => {});
} catch (error) {
  report.failed = String(error.stack ?? error);
  console.error(error);
  const pages = browser.contexts().flatMap((c) => c.pages());
  if (pages.length) await shot(pages[0], "99-failure").catch(() => {});
} finally {
  save();
  await browser.close();
}
process.exit(report.failed ? 1 : 0);
