// Concept Prompt Encoder: the handles of the connected concept pack as chips (token, concept name, colour);
// a click inserts the handle at the cursor of the prompt.
//
// The pack is found by following the `concepts` input upstream (through reroutes) to a Load Concept Pack or a
// Break-A-Scene Trainer node and reading its pack_name. Its handles come from the pack's read-only route
// (GET /break_a_scene/packs/<name>, nodes/routes.py), or, while a trainer is still training it, from the
// trainer's live messages. Requests are made on load, on connection changes, when the pointer enters the node's
// chip area and when a trainer reports; only packs the listing names are requested (no 404s in the console).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { onTrainerUpdate, trainerState } from "./live_view.js";

const ENCODER = "ConceptPromptEncoder";
const SOURCES = new Set(["ConceptPackLoader", "BreakASceneTrainer"]);
const PASS_THROUGH = new Set(["Reroute"]);
const ROUTE = "/break_a_scene/packs";

function inputSlot(node, name) {
  return (node.inputs ?? []).findIndex((input) => input?.name === name);
}

// The node that produces the pack, following reroutes; null when nothing (known) is connected.
function packSource(node) {
  let current = node;
  let slot = inputSlot(node, "concepts");
  for (let hops = 0; hops < 32 && slot >= 0; hops++) {
    const upstream = current.getInputNode?.(slot);
    if (!upstream) return null;
    if (SOURCES.has(upstream.comfyClass)) return upstream;
    if (!PASS_THROUGH.has(upstream.type) && !PASS_THROUGH.has(upstream.comfyClass)) return null;
    current = upstream;
    slot = 0;
  }
  return null;
}

function packName(source) {
  const value = source?.widgets?.find((w) => w.name === "pack_name")?.value;
  const name = typeof value === "string" ? value.trim() : "";
  return name ? name.replace(/\.safetensors$/, "") : "";
}

async function fetchJson(route) {
  try {
    const response = await api.fetchApi(route, { cache: "no-store" });
    return response.ok ? await response.json() : null;
  } catch {
    return null;           // server gone or restarting: no chips, no noise
  }
}

// The concepts of the pack `name`: [{token, name, color}] or null when there is no such pack (yet).
async function packConcepts(name) {
  const listing = await fetchJson(ROUTE);
  if (!listing?.packs?.includes(`${name}.safetensors`)) return null;
  const pack = await fetchJson(`${ROUTE}/${encodeURIComponent(name)}`);
  return Array.isArray(pack?.concepts) ? pack.concepts : null;
}

function textWidget(node) {
  return node.widgets?.find((w) => w.name === "text");
}

export function insertHandle(node, token) {
  const widget = textWidget(node);
  if (!widget) return;
  const element = widget.inputEl ?? widget.element;
  const text = String(widget.value ?? "");
  let start = text.length;
  let end = text.length;
  if (element && typeof element.selectionStart === "number") {
    start = element.selectionStart;
    end = element.selectionEnd;
  }
  const before = text.slice(0, start);
  const after = text.slice(end);
  const insert = (before && !/\s$/.test(before) ? " " : "") + token + (after && !/^\s/.test(after) ? " " : "");
  widget.value = before + insert + after;
  if (element) {
    element.value = widget.value;
    const caret = before.length + insert.length;
    element.focus();
    element.setSelectionRange?.(caret, caret);
    element.dispatchEvent(new Event("input", { bubbles: true }));
  }
  widget.callback?.(widget.value);
  node.setDirtyCanvas?.(true, true);
}

function renderChips(node, concepts, hint) {
  const box = node.basChips;
  if (!box) return;
  box.replaceChildren();
  box.dataset.count = String(concepts?.length ?? 0);
  if (!concepts?.length) {
    const note = document.createElement("span");
    note.className = "bas-chips-hint";
    note.textContent = hint;
    Object.assign(note.style, { color: "#888", font: "11px sans-serif" });
    box.append(note);
    return;
  }
  for (const concept of concepts) {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "bas-chip";
    chip.dataset.token = concept.token;
    chip.title = `Insert ${concept.token} (${concept.name}) at the cursor`;
    chip.textContent = concept.name && concept.name !== concept.token.replace(/[<>]/g, "")
      ? `${concept.token} ${concept.name}` : concept.token;
    Object.assign(chip.style, {
      border: `1px solid ${concept.color}`, color: concept.color, background: "#1b1b1b", borderRadius: "10px",
      padding: "1px 8px", font: "11px sans-serif", cursor: "pointer",
    });
    // mousedown would move the focus (and the cursor) away from the prompt before the click
    chip.addEventListener("mousedown", (event) => event.preventDefault());
    chip.addEventListener("click", (event) => {
      event.preventDefault();
      event.stopPropagation();
      insertHandle(node, concept.token);
    });
    box.append(chip);
  }
}

async function refresh(node) {
  if (!node.basChips) return;
  const ticket = (node.basChipsTicket = (node.basChipsTicket ?? 0) + 1);
  const source = packSource(node);
  const name = packName(source);
  let concepts = null;
  let hint = "Connect a concept pack to see its handles here.";
  if (source && name) {
    concepts = await packConcepts(name);
    if (!concepts && source.comfyClass === "BreakASceneTrainer") {
      concepts = trainerState(source.id)?.concepts ?? null;
    }
    hint = `No saved pack "${name}" yet: its handles appear here once the trainer starts.`;
  }
  if (ticket === node.basChipsTicket) renderChips(node, concepts, hint);
}

function encoders() {
  return (app.graph?.findNodesByType?.(ENCODER) ?? []).filter((node) => node.basChips);
}

app.registerExtension({
  name: "BreakAScene.HandleChips",

  setup() {
    // A trainer's first message gives its concepts, its last one says the pack is saved: refresh then only.
    onTrainerUpdate((id, state) => encoders().forEach((node) => {
      if (state.done || node.basChips.dataset.count === "0") refresh(node);
    }));
  },

  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== ENCODER) return;
    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function () {
      const result = onConnectionsChange?.apply(this, arguments);
      if (this.basChips) queueMicrotask(() => refresh(this));
      return result;
    };
  },

  nodeCreated(node) {
    if (node.comfyClass !== ENCODER || typeof node.addDOMWidget !== "function") return;
    const box = document.createElement("div");
    box.className = "bas-chips";
    Object.assign(box.style, { display: "flex", flexWrap: "wrap", gap: "4px", padding: "2px 0",
      alignContent: "flex-start", overflow: "hidden" });
    box.addEventListener("pointerenter", () => refresh(node));
    node.basChips = box;
    node.addDOMWidget("handles", "bas_handle_chips", box, { serialize: false, hideOnZoom: false,
      getMinHeight: () => 26, getMaxHeight: () => 80 });
    requestAnimationFrame(() => refresh(node));
  },

  loadedGraphNode(node) {
    if (node.comfyClass !== ENCODER) return;
    const size = node.computeSize?.();          // a saved size may leave no room for the chips
    if (size && node.size[1] < size[1]) node.setSize([node.size[0], size[1]]);
    refresh(node);
  },
});
