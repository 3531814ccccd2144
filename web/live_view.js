// Break-A-Scene Trainer: the live training view inside the node.
//
// The trainer sends "break_a_scene.training" messages (nodes/live.py): progress (phase, step, steps/s, time
// left, the loss history), maps (each handle's latest cross-attention map and the training image) and done
// (final losses; `cached` when the saved pack was loaded instead of training). This file keeps the latest state
// per trainer node and draws it in a DOM widget: a status line, a loss chart (diffusion, attention, total; raw
// and smoothed) and one tile per handle (its map tinted in the concept's colour over the image, labelled).
// A message with a new `run` id clears the view; a page reloaded mid-training shows it again at the next
// message (every progress message carries the whole history). Nothing is polled.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EVENT = "break_a_scene.training";
const TRAINER = "BreakASceneTrainer";
const SERIES = [
  { key: "diffusion", label: "diffusion", color: "#4da3ff" },
  { key: "attention", label: "attention", color: "#ffb347" },
  { key: "total", label: "total", color: "#e8e8e8" },
];
const SMOOTHING = 0.8;          // weight of the running value in the smoothed (EMA) curves
const CHART_HEIGHT = 130;
const TILE = 96;
const VIEW_HEIGHT = 310;        // status + chart + one row of map tiles with their labels
const MIN_WIDTH = 380;

// node id (string) -> {run, progress, concepts, history, maps, done}
const states = new Map();
// callbacks of other parts of the pack that want the trainer's concepts (the prompt encoder's chips)
const listeners = new Set();

export function trainerState(nodeId) {
  return states.get(String(nodeId));
}

export function onTrainerUpdate(callback) {
  listeners.add(callback);
}

function formatSeconds(seconds) {
  if (!Number.isFinite(seconds)) return "?";
  seconds = Math.max(0, Math.round(seconds));
  const m = Math.floor(seconds / 60);
  const s = seconds % 60;
  return m ? `${m} min ${String(s).padStart(2, "0")} s` : `${s} s`;
}

function formatLoss(value) {
  return typeof value === "number" && Number.isFinite(value) ? value.toPrecision(3) : "–";
}

function statusText(state) {
  if (!state) return "Not trained in this session yet: queue the prompt to watch training here.";
  const done = state.done;
  if (done) {
    const losses = done.losses ?? {};
    const final = ["phase2_diffusion", "phase2_attention", "phase2_loss"]
      .filter((key) => key in losses)
      .map((key) => `${key.replace("phase2_", "")} ${formatLoss(losses[key])}`)
      .join(", ");
    const what = done.cached ? "Loaded the saved pack (same model, scene and settings; no training)" : "Training done";
    return final ? `${what}. Final losses: ${final}.` : `${what}.`;
  }
  const p = state.progress;
  if (!p) return "Training is starting…";
  const rate = Number(p.rate);
  return `Phase ${p.phase}: step ${p.step}/${p.steps} (${p.done}/${p.total} in all) · ` +
    `${Number.isFinite(rate) ? rate.toFixed(2) : "?"} steps/s · ${formatSeconds(p.eta)} left`;
}

function smooth(values) {
  const out = [];
  let running = null;
  for (const value of values) {
    if (typeof value !== "number" || !Number.isFinite(value)) {
      out.push(null);
      continue;
    }
    running = running === null ? value : SMOOTHING * running + (1 - SMOOTHING) * value;
    out.push(running);
  }
  return out;
}

function drawChart(canvas, history) {
  const width = canvas.clientWidth || 300;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(CHART_HEIGHT * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.fillStyle = "#181818";
  ctx.fillRect(0, 0, width, CHART_HEIGHT);
  const steps = history?.steps ?? [];
  canvas.dataset.points = String(steps.length);
  const series = SERIES.map((s) => ({ ...s, values: history?.[s.key] ?? [] }))
    .filter((s) => s.values.some((v) => typeof v === "number" && v > 0));
  if (!steps.length || !series.length) {
    ctx.fillStyle = "#888";
    ctx.font = "11px sans-serif";
    ctx.fillText("loss chart: no points yet", 8, CHART_HEIGHT / 2);
    return;
  }
  const logs = series.flatMap((s) => s.values.filter((v) => typeof v === "number" && v > 0).map(Math.log10));
  let low = Math.min(...logs);
  let high = Math.max(...logs);
  if (high - low < 1e-6) {
    low -= 0.5;
    high += 0.5;
  }
  const left = 40, right = width - 6, top = 16, bottom = CHART_HEIGHT - 16;
  const lastStep = steps[steps.length - 1] || 1;
  const x = (step) => left + (lastStep > 1 ? (step - 1) / (lastStep - 1) : 1) * (right - left);
  const y = (value) => bottom - (Math.log10(value) - low) / (high - low) * (bottom - top);
  ctx.strokeStyle = "#333";
  ctx.fillStyle = "#888";
  ctx.font = "10px sans-serif";
  ctx.lineWidth = 1;
  for (const value of [low, (low + high) / 2, high]) {
    const yy = bottom - (value - low) / (high - low) * (bottom - top);
    ctx.beginPath();
    ctx.moveTo(left, yy);
    ctx.lineTo(right, yy);
    ctx.stroke();
    ctx.fillText(Number(10 ** value).toPrecision(2), 2, yy + 3);
  }
  ctx.fillText(`step ${lastStep}`, right - 50, CHART_HEIGHT - 4);
  const line = (values, color, alpha, lineWidth) => {
    ctx.globalAlpha = alpha;
    ctx.strokeStyle = color;
    ctx.lineWidth = lineWidth;
    ctx.beginPath();
    let drawing = false;
    values.forEach((value, i) => {
      if (typeof value !== "number" || !(value > 0)) {
        drawing = false;
        return;
      }
      if (drawing) ctx.lineTo(x(steps[i]), y(value));
      else ctx.moveTo(x(steps[i]), y(value));
      drawing = true;
    });
    ctx.stroke();
    ctx.globalAlpha = 1;
  };
  for (const s of series) {
    line(s.values, s.color, 0.35, 1);               // raw
    line(smooth(s.values), s.color, 1, 2);          // smoothed
  }
  series.forEach((s, i) => {
    ctx.fillStyle = s.color;
    ctx.fillText(s.label, left + 4 + i * 62, 11);
  });
  ctx.fillStyle = "#888";
  ctx.fillText("thin: raw · thick: smoothed", left + 4, CHART_HEIGHT - 4);
}

function loadImage(url) {
  return new Promise((resolve) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => resolve(null);
    image.src = url;
  });
}

function hexToRgb(hex) {
  const value = parseInt(String(hex).replace("#", ""), 16);
  return Number.isFinite(value) ? [(value >> 16) & 255, (value >> 8) & 255, value & 255] : [255, 255, 255];
}

async function drawTile(canvas, imageUrl, mapUrl, concept, chosen) {
  const [image, map] = await Promise.all([imageUrl ? loadImage(imageUrl) : null, mapUrl ? loadImage(mapUrl) : null]);
  const aspect = image ? image.width / image.height : 1;
  const w = aspect >= 1 ? TILE : Math.round(TILE * aspect);
  const h = aspect >= 1 ? Math.round(TILE / aspect) : TILE;
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, w, h);
  if (image) {
    ctx.globalAlpha = 0.45;
    ctx.drawImage(image, 0, 0, w, h);
    ctx.globalAlpha = 1;
  }
  if (map) {
    const layer = document.createElement("canvas");
    layer.width = w;
    layer.height = h;
    const lctx = layer.getContext("2d");
    lctx.imageSmoothingEnabled = true;
    lctx.drawImage(map, 0, 0, w, h);
    const pixels = lctx.getImageData(0, 0, w, h);
    const [r, g, b] = hexToRgb(concept.color);
    for (let i = 0; i < pixels.data.length; i += 4) {
      const heat = pixels.data[i];
      pixels.data[i] = r;
      pixels.data[i + 1] = g;
      pixels.data[i + 2] = b;
      pixels.data[i + 3] = Math.round(heat * 0.85);
    }
    lctx.putImageData(pixels, 0, 0);
    ctx.drawImage(layer, 0, 0);
  }
  canvas.dataset.drawn = map ? "map" : "image";
  canvas.title = chosen === false ? `${concept.token} was not in this step's prompt` : concept.token;
}

function buildView() {
  const root = document.createElement("div");
  root.className = "bas-live";
  Object.assign(root.style, {
    display: "flex", flexDirection: "column", gap: "4px", padding: "4px", boxSizing: "border-box",
    font: "11px sans-serif", color: "#ddd", background: "#202020", borderRadius: "4px", overflow: "hidden",
  });
  const status = document.createElement("div");
  status.className = "bas-live-status";
  status.style.minHeight = "28px";
  const chart = document.createElement("canvas");
  chart.className = "bas-live-chart";
  Object.assign(chart.style, { width: "100%", height: `${CHART_HEIGHT}px` });
  const maps = document.createElement("div");
  maps.className = "bas-live-maps";
  Object.assign(maps.style, { display: "flex", flexWrap: "wrap", gap: "4px" });
  root.append(status, chart, maps);
  return { root, status, chart, maps };
}

function render(node) {
  const view = node.basLiveView;
  if (!view) return;
  const state = trainerState(node.id);
  view.status.textContent = statusText(state);
  view.root.dataset.run = state?.run ?? "";
  view.root.dataset.phase = state?.done ? (state.done.cached ? "cached" : "done") : state?.progress ? "training" : "idle";
  drawChart(view.chart, state?.history);
  const maps = state?.maps;
  const concepts = state?.concepts ?? [];
  const key = maps ? `${state.run}:${maps.phase}:${maps.step}:${concepts.length}` : `${state?.run ?? ""}:none`;
  if (view.maps.dataset.key === key) return;
  view.maps.dataset.key = key;
  view.maps.replaceChildren();
  if (!maps?.maps?.length) return;
  maps.maps.forEach((mapUrl, i) => {
    const concept = concepts[i] ?? { token: `<asset${i}>`, name: `asset${i}`, color: "#ffffff" };
    const tile = document.createElement("div");
    tile.className = "bas-live-tile";
    Object.assign(tile.style, { display: "flex", flexDirection: "column", alignItems: "center" });
    const canvas = document.createElement("canvas");
    canvas.className = "bas-live-map";
    const label = document.createElement("div");
    label.className = "bas-live-label";
    label.textContent = concept.name && concept.name !== concept.token.replace(/[<>]/g, "")
      ? `${concept.token} ${concept.name}` : concept.token;
    Object.assign(label.style, { color: concept.color, fontWeight: "bold", maxWidth: `${TILE}px`,
      overflow: "hidden", textOverflow: "ellipsis", whiteSpace: "nowrap" });
    if (maps.chosen?.[i] === false) label.textContent += " (not in prompt)";
    tile.append(canvas, label);
    view.maps.append(tile);
    drawTile(canvas, maps.image, mapUrl, concept, maps.chosen?.[i]);
  });
}

function fitNode(node) {
  const size = node.computeSize?.();
  if (size) node.setSize([Math.max(node.size[0], MIN_WIDTH, size[0]), Math.max(node.size[1], size[1])]);
}

function findNode(nodeId) {
  const graph = app.graph;
  if (!graph) return null;
  const node = graph.getNodeById?.(nodeId) ?? graph.getNodeById?.(Number(nodeId));
  return node && node.comfyClass === TRAINER ? node : null;
}

function onMessage(event) {
  const message = event?.detail;
  if (!message || typeof message !== "object" || message.node == null || !message.run) return;
  const id = String(message.node);
  let state = states.get(id);
  if (!state || state.run !== message.run) {
    state = { run: message.run, progress: null, concepts: [], history: null, maps: null, done: null };
    states.set(id, state);
  }
  if (Array.isArray(message.concepts)) state.concepts = message.concepts;
  if (message.history) state.history = message.history;
  if (message.kind === "progress") {
    state.progress = message;
  } else if (message.kind === "maps") {
    state.maps = message;
  } else if (message.kind === "done") {
    state.done = message;
    if (message.maps?.length) state.maps = message;
  }
  const node = findNode(id);
  if (node) {
    render(node);
    node.setDirtyCanvas?.(true, true);
  }
  for (const callback of listeners) {
    try {
      callback(id, state);
    } catch (error) {
      console.warn("Break-A-Scene: live view listener failed", error);
    }
  }
}

app.registerExtension({
  name: "BreakAScene.LiveView",

  setup() {
    api.addEventListener(EVENT, onMessage);
  },

  nodeCreated(node) {
    if (node.comfyClass !== TRAINER || typeof node.addDOMWidget !== "function") return;
    const view = buildView();
    node.basLiveView = view;
    node.addDOMWidget("live_view", "bas_live_view", view.root, {
      serialize: false,
      hideOnZoom: false,
      getMinHeight: () => VIEW_HEIGHT,
      getMaxHeight: () => VIEW_HEIGHT,
    });
    fitNode(node);
    requestAnimationFrame(() => render(node));
  },

  loadedGraphNode(node) {
    // a saved workflow brings its own node size: make room for the view
    if (node.comfyClass === TRAINER && node.basLiveView) fitNode(node);
  },
});
