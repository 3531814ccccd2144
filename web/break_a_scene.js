// Break-A-Scene node pack: one colour for all its nodes, and a short summary line under the
// Masked Concept Loader (concepts / names), the Trainer (trained or loaded from the cache) and the Export node.
import { app } from "../../scripts/app.js";

const NODE_IDS = new Set([
  "MaskedConceptLoader",
  "BreakASceneTrainer",
  "ConceptPackLoader",
  "HandleInjector",
  "ConceptPromptEncoder",
  "ConceptPackExport",
]);
const SUMMARY_NODES = new Set(["MaskedConceptLoader", "BreakASceneTrainer", "ConceptPackExport"]);
const COLOR = "#1f3b4d";
const BGCOLOR = "#2c5068";
const TEXT_COLOR = "#a9d3ea";

function connectedMasks(node) {
  return (node.inputs ?? []).filter(
    (input) => (input.name === "masks" || /^mask_\d$/.test(input.name)) && input.link != null,
  ).length;
}

function conceptNames(node) {
  const widget = node.widgets?.find((w) => w.name === "concept_names");
  const text = String(widget?.value ?? "").trim();
  return text ? text.split(",").map((name) => name.trim()) : [];
}

// Before the first run: what the widgets and links say (the masks batch may hold several concepts).
function liveSummary(node) {
  const names = conceptNames(node);
  const masks = connectedMasks(node);
  if (names.length) {
    const list = names.map((name, i) => `<asset${i}> ${name}`).join(", ");
    return `${names.length} concept${names.length === 1 ? "" : "s"}: ${list}`;
  }
  return masks ? `${masks} mask input${masks === 1 ? "" : "s"} connected (names asset0, asset1, ...)` : "connect one mask per concept";
}

app.registerExtension({
  name: "BreakAScene.Nodes",

  nodeCreated(node) {
    if (!NODE_IDS.has(node.comfyClass)) return;
    node.color = COLOR;
    node.bgcolor = BGCOLOR;
  },

  beforeRegisterNodeDef(nodeType, nodeData) {
    if (!SUMMARY_NODES.has(nodeData?.name)) return;

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      const lines = message?.bas_summary;
      this.basSummary = Array.isArray(lines) ? lines.join("\n") : undefined;
      this.setDirtyCanvas?.(true, true);
      return result;
    };

    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const result = onDrawForeground?.apply(this, arguments);
      if (this.flags?.collapsed) return result;
      const text = this.basSummary ?? (nodeData.name === "MaskedConceptLoader" ? liveSummary(this) : null);
      if (!text) return result;
      ctx.save();
      ctx.font = "11px sans-serif";
      ctx.fillStyle = TEXT_COLOR;
      ctx.textAlign = "left";
      text.split("\n").forEach((line, i) => ctx.fillText(line, 6, this.size[1] + 16 + 13 * i));
      ctx.restore();
      return result;
    };
  },
});
