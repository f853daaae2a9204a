// The live plot of joint positions: a hand-drawn line chart on a <canvas>, in the page's theme.

export const PLOT_WINDOW_MS = 10000;

// Ten colours that stay apart on light and dark; then hues a golden angle apart.
const PALETTE = [
  "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
  "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22",
];
export const lineColor = (i) => PALETTE[i] ?? `hsl(${Math.round((i * 137.5) % 360)} 70% 48%)`;

// Keep one point older than the window: the line enters from the left edge.
export function prune(points, nowMs) {
  while (points.length > 1 && points[1][0] < nowMs - PLOT_WINDOW_MS) points.shift();
}

// Draws `joints` (app.js's: {model, color, history: [[ms, deg]]}) as they were up to `nowMs`.
export function drawPlot(canvas, joints, nowMs) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const css = getComputedStyle(document.documentElement);
  // One scale for all: the union of the joints' limits.
  let lo = Math.min(...joints.map((j) => j.model.min_deg));
  let hi = Math.max(...joints.map((j) => j.model.max_deg));
  if (!(hi > lo)) [lo, hi] = [-90, 90];
  // Ticks on round angles: the smallest step that gives at most six lines; the axis ends on one.
  const step = [5, 10, 15, 30, 45, 90, 180, 360].find((d) => (hi - lo) / d <= 6) ?? 720;
  [lo, hi] = [Math.floor(lo / step) * step, Math.ceil(hi / step) * step];
  const [left, right, top, bottom] = [44, 12, 8, 22];
  const x = (t) => left + (w - left - right) * (1 - (nowMs - t) / PLOT_WINDOW_MS);
  const y = (v) => top + ((h - top - bottom) * (hi - v)) / (hi - lo);

  ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  ctx.strokeStyle = css.getPropertyValue("--grid");
  ctx.fillStyle = css.getPropertyValue("--muted");
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let v = lo; v <= hi; v += step) {
    ctx.beginPath();
    ctx.moveTo(left, y(v));
    ctx.lineTo(w - right, y(v));
    ctx.stroke();
    ctx.fillText(Math.round(v) + "°", left - 6, y(v));
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (let s = 0; s < PLOT_WINDOW_MS / 1000; s += 2) {
    ctx.fillText(s ? `-${s} s` : "now", x(nowMs - s * 1000), h - bottom + 5);
  }

  ctx.save();
  ctx.beginPath();
  ctx.rect(left, top, w - left - right, h - top - bottom);
  ctx.clip();
  ctx.lineWidth = 2;
  for (const joint of joints) {
    const points = joint.history;
    prune(points, nowMs);
    if (!points.length) continue;
    ctx.strokeStyle = joint.color;
    ctx.beginPath();
    for (const [t, v] of points) ctx.lineTo(x(t), y(v));
    ctx.lineTo(x(nowMs), y(points[points.length - 1][1])); // a servo holds its last position
    ctx.stroke();
  }
  ctx.restore();
}
