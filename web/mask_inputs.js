// Masked Concept Loader: one more mask input appears when the last one is connected (mask_0 … mask_7), instead
// of eight inputs from the start. The server still declares all eight as optional inputs, so workflows saved
// with connected mask_N inputs (before this, or with gaps) load as they are; unconnected inputs after the last
// connected one are removed, keeping one free input to connect next.
import { app } from "../../scripts/app.js";

const LOADER = "MaskedConceptLoader";
const MAX_MASKS = 8;
const MASK_INPUT = /^mask_(\d+)$/;
const OPTIONAL_SHAPE = 7;       // LiteGraph's hollow circle, the frontend's mark of an optional input

function maskSlots(node) {
  const slots = [];
  (node.inputs ?? []).forEach((input, slot) => {
    const match = MASK_INPUT.exec(input?.name ?? "");
    if (match) slots.push({ slot, index: Number(match[1]), connected: input.link != null });
  });
  return slots;
}

// Keep mask_0 … mask_{last connected + 1}; add what is missing, remove the rest (from the end, so that the
// slot numbers of the inputs that stay do not move).
export function updateMaskInputs(node) {
  if (!node?.inputs || node.basUpdatingMasks) return;
  node.basUpdatingMasks = true;
  try {
    const slots = maskSlots(node);
    const lastConnected = Math.max(-1, ...slots.filter((s) => s.connected).map((s) => s.index));
    const wanted = Math.min(MAX_MASKS, lastConnected + 2);
    for (const s of [...slots].sort((a, b) => b.slot - a.slot)) {
      if (s.index >= wanted && !s.connected) node.removeInput(s.slot);
    }
    const present = new Set(maskSlots(node).map((s) => s.index));
    for (let i = 0; i < wanted; i++) {
      if (!present.has(i)) node.addInput(`mask_${i}`, "MASK", { shape: OPTIONAL_SHAPE });
    }
    const size = node.computeSize?.();
    if (size) node.setSize([node.size[0], Math.max(size[1], 60)]);
    node.setDirtyCanvas?.(true, true);
  } finally {
    node.basUpdatingMasks = false;
  }
}

app.registerExtension({
  name: "BreakAScene.MaskInputs",

  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== LOADER) return;
    const onConnectionsChange = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function (type, slot, connected, link, input) {
      const result = onConnectionsChange?.apply(this, arguments);
      // Inputs only (type 1); while a graph loads, loadedGraphNode below does it once everything is linked.
      if (type === 1 && MASK_INPUT.test(input?.name ?? "") && !this.basConfiguring) {
        queueMicrotask(() => updateMaskInputs(this));
      }
      return result;
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function () {
      this.basConfiguring = true;
      try {
        return onConfigure?.apply(this, arguments);
      } finally {
        this.basConfiguring = false;
      }
    };
  },

  nodeCreated(node) {
    if (node.comfyClass !== LOADER) return;
    // A node added by hand: only mask_0. A node being loaded from a workflow gets its saved inputs back in
    // configure(); loadedGraphNode then trims them.
    updateMaskInputs(node);
  },

  loadedGraphNode(node) {
    if (node.comfyClass === LOADER) updateMaskInputs(node);
  },
});
