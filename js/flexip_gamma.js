// FlexIP Gated Apply: a labelled gamma slider and a "live" toggle that re-queues the graph
// when the slider settles, so the user can scrub between preservation and personalization.
//
// Only the public shims are imported ("../../scripts/app.js"); everything else goes through
// the node's own widgets, so the same code runs on the classic LiteGraph canvas and in
// "Nodes 2.0" (setting Comfy.VueNodes.Enabled), where Vue draws the widgets itself.
import { app } from "../../scripts/app.js";

const NODE = "FlexIPGatedApply";
// How long the slider must rest before a drag re-queues: long enough that a drag queues once
// when it pauses, short enough to feel live. Releasing the pointer queues at once.
const DEBOUNCE_MS = 400;
// nodes/apply.py: gamma 0 follows the prompt (personalize), gamma 1 keeps the subject (preserve).
const LOW_END = "personalize";
const HIGH_END = "preserve";
// LiteGraph's BaseWidget.margin (node edge to widget edge); not exported through the shims.
const MARGIN = 15;

// Live nodes with a gamma change not yet queued; flushed on settle or pointer release.
const pending = new Set();

function flush(state) {
  clearTimeout(state.timer);
  pending.delete(state);
  if (!state.live.value) return; // live was switched off while the change was pending
  if (!state.node.graph) return; // the node was deleted while the change was pending
  const gamma = state.gamma.value;
  // A drag that paused (and queued) and then comes back to that value has nothing new to send.
  if (gamma === state.queuedGamma) return;
  state.queuedGamma = gamma;
  // app.queuePrompt serialises the whole graph (graphToPrompt) at call time, so the prompt
  // carries the value the slider settled on. 0 = back of the queue, 1 = one batch.
  app.queuePrompt(0, 1);
}

function schedule(state) {
  clearTimeout(state.timer);
  pending.add(state);
  state.timer = setTimeout(() => flush(state), DEBOUNCE_MS);
}

// A release ends the drag: queue now instead of waiting for the debounce. Capture phase, because
// LiteGraph stops the pointerup of a click; the zero timeout lets the canvas (or the Vue slider)
// apply the release's own value change first.
window.addEventListener(
  "pointerup",
  () => setTimeout(() => [...pending].forEach(flush), 0),
  true
);

// Canvas only: write the two ends inside the slider bar, around LiteGraph's centred
// "gamma 0.50" text. Skipped when the node is too narrow for all three to fit.
function drawEnds(widget, ctx, { width, showText = true }) {
  if (!showText || widget.computedDisabled) return;
  const height = widget.height ?? 20;
  const precision = widget.options?.precision ?? 2;
  const centre = `${widget.label || widget.name}  ${Number(widget.value).toFixed(precision)}`;
  ctx.save();
  const centreWidth = ctx.measureText(centre).width;
  ctx.font = `${Math.round(height * 0.5)}px sans-serif`;
  const pad = 6;
  const room = (width - 2 * MARGIN - centreWidth) / 2 - 2 * pad;
  if (ctx.measureText(LOW_END).width <= room && ctx.measureText(HIGH_END).width <= room) {
    ctx.fillStyle = widget.secondary_text_color ?? "#999";
    ctx.textBaseline = "middle";
    ctx.textAlign = "left";
    ctx.fillText(LOW_END, MARGIN + pad, widget.y + height / 2);
    ctx.textAlign = "right";
    ctx.fillText(HIGH_END, width - MARGIN - pad, widget.y + height / 2);
  }
  ctx.restore();
}

app.registerExtension({
  name: "comfyui-flexip.GammaWidget",

  nodeCreated(node) {
    if (node.comfyClass !== NODE) return;
    const gamma = node.widgets?.find((w) => w.name === "gamma");
    if (!gamma) return;

    // serialize: false in options keeps it out of graphToPrompt (the API prompt: the server has
    // no "live" input and would refuse it); widget.serialize = false keeps it out of the saved
    // workflow's widgets_values, so a shared workflow never opens already re-queueing. Added
    // last, so the positional widgets_values of the real inputs are unchanged.
    // No on/off texts: Nodes 2.0 in frontend 1.58 draws a toggle that has them as a two-button
    // group without a name (and truncates them). Without them the canvas writes true/false and
    // Nodes 2.0 (1.32 and 1.58) draws a switch named "live"; the tooltip says what it does.
    const live = node.addWidget("toggle", "live", false, () => {}, { serialize: false });
    live.serialize = false;
    live.tooltip = "Re-queue the workflow when gamma settles (after a drag or a click).";
    node.setSize([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);

    const state = { node, gamma, live, timer: null, queuedGamma: undefined };
    // Every change of the value comes through the widget's callback: canvas drags and clicks
    // (BaseWidget.setValue), the Vue slider (NodeWidgets updateHandler), and scripts.
    const callback = gamma.callback;
    gamma.callback = function (...args) {
      const result = callback?.apply(this, args);
      if (live.value) schedule(state);
      return result;
    };

    // LiteGraph's FLOAT "slider" widget is a class instance drawn by drawWidget; a "number"
    // widget (Comfy.DisableSliders) has its own text where the labels would go.
    if (gamma.type === "slider" && typeof gamma.drawWidget === "function") {
      const drawWidget = gamma.drawWidget;
      gamma.drawWidget = function (ctx, options) {
        drawWidget.call(this, ctx, options);
        drawEnds(this, ctx, options);
      };
    }
  },
});
