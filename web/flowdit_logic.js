// Pure logic of the FlowDiT frontend extension: no DOM, no ComfyUI, so node's test runner can
// check it (tests/web/). The formulas mirror core/flow/schedules.py (DESIGN.md's math contract).

/** Nearest valid frame count 4n+1 (>= 1) to `frames`. */
export function snapLength(frames) {
  const f = Math.max(1, Math.round(Number(frames) || 1));
  return 4 * Math.round((f - 1) / 4) + 1;
}

/** Nearest positive multiple of `stride` to `size` (never below one stride). */
export function snapSize(size, stride) {
  const s = Math.max(1, Math.round(Number(stride) || 1));
  return Math.max(s, s * Math.round((Number(size) || s) / s));
}

/** The resolution/noise-level shift: k*s / (1 + (k-1)*s). */
export function shiftSigma(sigma, shift) {
  return (shift * sigma) / (1 + (shift - 1) * sigma);
}

/** Inference sigmas: shift(linspace(denoise, 0, steps+1)[i]) for i < steps, then a final 0. */
export function flowSigmas(steps, shift, denoise = 1.0) {
  const n = Math.max(1, Math.floor(steps));
  const out = [];
  for (let i = 0; i < n; i++) {
    const s = denoise * (1 - i / n);
    out.push(shiftSigma(s, shift));
  }
  out.push(0);
  return out;
}

/** Points of the sigma curve in a box (x right, y down), for drawing on the scheduler node. */
export function curvePoints(sigmas, x, y, width, height) {
  const n = sigmas.length - 1;
  return sigmas.map((s, i) => [x + (n > 0 ? (i / n) * width : 0), y + (1 - s) * height]);
}
