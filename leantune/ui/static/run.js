// A run's page: polls /api/run/NAME and draws its curves, progress, metrics, checkpoints and failure.
"use strict";

const runName = document.getElementById("run").dataset.name;
let last = null;

function lossSeries(curves) {
  const out = {};
  for (const [k, v] of Object.entries(curves)) if (k.endsWith("loss")) out[k] = v;
  return out;
}

function metricSeries(curves) {
  const out = {};
  for (const [k, v] of Object.entries(curves)) if (!k.endsWith("loss")) out[k] = v;
  return out;
}

function drawCharts() {
  if (!last) return;
  const log = document.getElementById("logscale").checked;
  drawChart(document.getElementById("chart"), lossSeries(last.curves), {log, empty: "no loss logged yet"});
  const metrics = metricSeries(last.curves);
  const el = document.getElementById("metric-chart");
  if (Object.values(metrics).some((v) => v.length)) drawChart(el, metrics, {});
  else el.replaceChildren();
}

function render(d) {
  last = d;
  const s = d.summary, p = d.progress;
  const status = document.getElementById("status");
  status.textContent = s.status;
  status.className = "status " + s.status;
  document.getElementById("what").textContent = `${s.task} · ${s.method} · ${s.model}` +
    (s.started ? ` · started ${fmtTime(s.started)}` : "") + (s.duration ? ` · ${fmtDuration(s.duration)}` : "");
  document.getElementById("bar").style.width = (100 * p.fraction).toFixed(1) + "%";
  document.getElementById("progress-text").textContent = `step ${p.step}${p.total ? " of " + p.total : ""}` +
    (p.eta_s !== null ? ` · about ${fmtDuration(p.eta_s)} left` : "") +
    (s.value !== null ? ` · ${s.metric} ${fmtNum(s.value)}` : "");
  document.getElementById("stop").hidden = s.status !== "running";
  const canResume = s.status !== "running" && d.checkpoints.some((c) => c.step !== null);
  document.getElementById("resume").hidden = !canResume;
  document.getElementById("resume-steps").hidden = !canResume;
  document.getElementById("failure").hidden = !(d.error || (d.log_tail && s.status === "failed"));
  document.getElementById("error-line").textContent = d.error || "";
  document.getElementById("log-tail").textContent = (d.log_tail || []).join("\n");
  drawCharts();
  const final = document.getElementById("final");
  final.hidden = !d.metrics;
  if (d.metrics) {
    document.getElementById("metrics").replaceChildren(...Object.entries(d.metrics)
      .map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, fmtNum(v)))));
  }
  document.getElementById("confusion").replaceChildren(...(d.confusion ? confusionTable(d.confusion) : []));
  document.getElementById("samples").hidden = !d.predictions.length;
  if (d.predictions.length) {
    const cols = Object.keys(d.predictions[0]);
    const cell = (v) => h("td", {}, typeof v === "object" && v !== null ? JSON.stringify(v) : v);
    document.getElementById("predictions").replaceChildren(
      h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))),
      h("tbody", {}, d.predictions.map((r) => h("tr", {}, cols.map((c) => cell(r[c]))))));
  }
  const checkpoints = d.checkpoints.map((c) => h("tr", {class: "checkpoint"},
    h("td", {}, c.name, c.latest ? " (latest)" : ""), h("td", {class: "num"}, c.step === null ? "best" : c.step),
    h("td", {class: "num"}, c.size_mb), h("td", {}, fmtTime(c.time))));
  document.querySelector("#checkpoints tbody").replaceChildren(...(checkpoints.length ? checkpoints :
    [h("tr", {}, h("td", {colspan: 4, class: "muted"}, "none"))]));
  const cfg = document.getElementById("config");
  if (cfg.textContent !== d.config) cfg.textContent = d.config || "";
}

// The confusion matrix's heading and table (rows: true labels, columns: predicted), cells shaded by count.
function confusionTable(c) {
  const counts = c.matrix.flat().map(Number).filter(Number.isFinite);
  const max = Math.max(1, ...counts);
  const shade = (v) => Number.isFinite(Number(v)) ? (0.75 * Number(v) / max).toFixed(2) : "0";
  const head = h("tr", {}, h("th", {}, "true \\ predicted"), c.labels.map((l) => h("th", {}, l)));
  const rows = c.matrix.map((row, i) => h("tr", {}, h("th", {}, c.labels[i]),
    (Array.isArray(row) ? row : [row]).map((v) => h("td", {class: "num", style: `background:rgba(31,119,180,${shade(v)})`},
      typeof v === "object" && v !== null ? JSON.stringify(v) : v))));
  return [h("h3", {}, "Confusion matrix"), h("table", {id: "confusion-matrix", class: "confusion"}, head, rows)];
}

async function refresh() {
  render(await api("/api/run/" + encodeURI(runName)));
}

document.getElementById("logscale").addEventListener("change", drawCharts);
document.getElementById("stop").addEventListener("click", async () => {
  showError("");
  try { await api("/api/stop/" + encodeURI(runName), {}); await refresh(); } catch (e) { showError(e.message); }
});
document.getElementById("resume").addEventListener("click", async () => {
  showError("");
  const steps = parseInt(document.getElementById("max-steps").value, 10);
  try {
    await api("/api/resume/" + encodeURI(runName), {max_steps: Number.isNaN(steps) ? null : steps});
    await refresh();
  } catch (e) { showError(e.message); }
});
poll(refresh, 1500);
