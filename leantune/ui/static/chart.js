// A small SVG line chart: several series of [x, y] points, each point drawn (a 3-step run still shows), optional
// log-scale y axis, axis ticks and a legend; built node by node (the run's values are never parsed as HTML).
"use strict";

const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

function niceTicks(lo, hi, count) {
  if (lo === hi) { lo -= 0.5; hi += 0.5; }
  const step = Math.pow(10, Math.floor(Math.log10((hi - lo) / count)));
  const mult = [1, 2, 5, 10].find((m) => (hi - lo) / (step * m) <= count) || 10;
  const s = step * mult, out = [];
  for (let v = Math.ceil(lo / s) * s; v <= hi + s * 1e-9; v += s) out.push(Number(v.toPrecision(12)));
  return out;
}

function drawChart(el, series, opts) {
  opts = opts || {};
  const log = !!opts.log;
  const W = 720, H = 300, L = 60, R = 150, T = 14, B = 36;
  const usable = (p) => Array.isArray(p) && Number.isFinite(p[0]) && Number.isFinite(p[1]) && (!log || p[1] > 0);
  const names = Object.keys(series).filter((k) => Array.isArray(series[k]) && series[k].some(usable));
  if (!names.length) { el.replaceChildren(h("p", {class: "muted"}, opts.empty || "no points yet")); return; }
  const pts = names.flatMap((k) => series[k].filter(usable));
  const ty = (v) => (log ? Math.log10(v) : v);
  let x0 = Math.min(...pts.map((p) => p[0])), x1 = Math.max(...pts.map((p) => p[0]));
  let y0 = Math.min(...pts.map((p) => ty(p[1]))), y1 = Math.max(...pts.map((p) => ty(p[1])));
  if (x0 === x1) { x0 = Math.max(0, x0 - 1); x1 += 1; }
  if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
  const pad = (y1 - y0) * 0.06; y0 -= pad; y1 += pad;
  const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = (y) => T + (1 - (ty(y) - y0) / (y1 - y0)) * (H - T - B);
  const svg = svgNode("svg", {viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: "svgchart", "data-log": String(log)},
    svgNode("rect", {x: L, y: T, width: W - L - R, height: H - T - B, fill: "#fff", stroke: "#ccc"}));
  niceTicks(x0, x1, 8).filter((v) => v >= x0 && v <= x1).forEach((v) => {
    svg.append(svgNode("line", {x1: sx(v), x2: sx(v), y1: H - B, y2: H - B + 4, stroke: "#666"}),
      svgNode("text", {x: sx(v), y: H - B + 16, "text-anchor": "middle", class: "tick"}, String(v)));
  });
  const yt = log ? niceTicks(Math.floor(y0), Math.ceil(y1), 6).filter((v) => Number.isInteger(v)).map((v) => Math.pow(10, v))
    : niceTicks(y0, y1, 6);
  yt.filter((v) => ty(v) >= y0 && ty(v) <= y1).forEach((v) => {
    svg.append(svgNode("line", {x1: L, x2: W - R, y1: sy(v), y2: sy(v), stroke: "#eee"}),
      svgNode("text", {x: L - 6, y: sy(v) + 4, "text-anchor": "end", class: "tick"}, String(Number(v.toPrecision(4)))));
  });
  svg.append(svgNode("text", {x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", class: "axis"}, "step"));
  names.forEach((name, i) => {
    const color = COLORS[i % COLORS.length];
    const ps = series[name].filter(usable);
    const d = ps.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    svg.append(svgNode("path", {d, fill: "none", stroke: color, "stroke-width": 1.6,
                          "stroke-dasharray": name.startsWith("eval") ? "5,3" : null}));
    ps.forEach((p) => svg.append(svgNode("circle", {class: "point", "data-series": name, "data-step": p[0],
      cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: 3, fill: color},
      svgNode("title", {}, `${name} step ${p[0]}: ${fmtNum(p[1])}`))));
    svg.append(svgNode("rect", {x: W - R + 12, y: T + 8 + i * 18, width: 12, height: 3, fill: color}),
      svgNode("text", {x: W - R + 30, y: T + 13 + i * 18, class: "legend"}, name));
  });
  el.replaceChildren(svg);
}
