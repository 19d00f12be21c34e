// FlowDiT frontend extension: snaps video sizes as the user types and draws the sigma schedule
// on the scheduler node. The math lives in flowdit_logic.js (tested with node's test runner).
import { app } from "../../scripts/app.js";
import { snapLength, snapSize, flowSigmas, curvePoints } from "./flowdit_logic.js";

const SIZE_STRIDE = 16;           // pixel sizes: VAE stride 8 x DiT patch 2 (Wan2.1); Wan2.2 checks 32 at run time
const LATENT_NODES = ["FlowDiTEmptyVideoLatent", "FlowDiTTI2VFirstFrame", "FlowDiTI2VConditioning"];
const SCHEDULER_NODE = "FlowDiTScheduler";
const CURVE_HEIGHT = 90;

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function wrapCallback(w, snap) {
  if (!w) return;
  const original = w.callback;
  w.callback = function (value, ...rest) {
    const snapped = snap(value);
    if (snapped !== value) w.value = snapped;
    return original?.call(this, w.value, ...rest);
  };
}

app.registerExtension({
  name: "FlowDiT.widgets",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (LATENT_NODES.includes(nodeData.name)) {
      const onCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = onCreated?.apply(this, arguments);
        wrapCallback(widget(this, "length"), snapLength);
        wrapCallback(widget(this, "width"), (v) => snapSize(v, SIZE_STRIDE));
        wrapCallback(widget(this, "height"), (v) => snapSize(v, SIZE_STRIDE));
        return r;
      };
    }
    if (nodeData.name === SCHEDULER_NODE) {
      const onCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const r = onCreated?.apply(this, arguments);
        this.setSize([Math.max(this.size[0], 260), this.size[1] + CURVE_HEIGHT + 10]);
        return r;
      };
      const onDraw = nodeType.prototype.onDrawForeground;
      nodeType.prototype.onDrawForeground = function (ctx) {
        onDraw?.apply(this, arguments);
        if (this.flags?.collapsed) return;
        const steps = widget(this, "steps")?.value ?? 20;
        const shift = widget(this, "shift")?.value ?? 5.0;
        const denoise = widget(this, "denoise")?.value ?? 1.0;
        const pad = 10;
        const w = this.size[0] - 2 * pad;
        // Below the last widget; grow the node if a loaded workflow made it too small.
        const widgetsBottom = Math.max(0, ...(this.widgets ?? []).map((x) => (x.last_y ?? x.y ?? 0) + 24));
        const top = widgetsBottom + 6;
        if (this.size[1] < top + CURVE_HEIGHT + pad) {
          this.setSize([this.size[0], top + CURVE_HEIGHT + pad]);
        }
        ctx.save();
        ctx.strokeStyle = "#555";
        ctx.strokeRect(pad, top, w, CURVE_HEIGHT);
        ctx.strokeStyle = "#8cf";
        ctx.beginPath();
        curvePoints(flowSigmas(steps, shift, denoise), pad, top, w, CURVE_HEIGHT).forEach(([x, y], i) => {
          if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
          ctx.fillStyle = "#8cf";
          ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
        });
        ctx.stroke();
        ctx.fillStyle = "#aaa";
        ctx.font = "10px sans-serif";
        ctx.fillText(`sigma: ${steps} steps, shift ${Number(shift).toFixed(2)}`, pad + 4, top + 12);
        ctx.restore();
      };
    }
  },
});
