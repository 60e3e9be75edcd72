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
  else el.innerHTML = "";
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
    document.getElementById("metrics").innerHTML = Object.entries(d.metrics)
      .map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(fmtNum(v))}</td></tr>`).join("");
  }
  document.getElementById("confusion").innerHTML = d.confusion ? confusionTable(d.confusion) : "";
  document.getElementById("samples").hidden = !d.predictions.length;
  if (d.predictions.length) {
    const cols = Object.keys(d.predictions[0]);
    document.getElementById("predictions").innerHTML = `<thead><tr>${cols.map((c) => `<th>${esc(c)}</th>`).join("")}</tr></thead>` +
      "<tbody>" + d.predictions.map((r) => `<tr>${cols.map((c) => `<td>${esc(typeof r[c] === "object" ? JSON.stringify(r[c]) : r[c])}</td>`).join("")}</tr>`).join("") + "</tbody>";
  }
  document.querySelector("#checkpoints tbody").innerHTML = d.checkpoints.map((c) => `<tr class="checkpoint">
    <td>${esc(c.name)}${c.latest ? " (latest)" : ""}</td><td class="num">${c.step === null ? "best" : c.step}</td>
    <td class="num">${c.size_mb}</td><td>${fmtTime(c.time)}</td></tr>`).join("") ||
    '<tr><td colspan="4" class="muted">none</td></tr>';
  const cfg = document.getElementById("config");
  if (cfg.textContent !== d.config) cfg.textContent = d.config || "";
}

function confusionTable(c) {
  const head = "<tr><th>true \\ predicted</th>" + c.labels.map((l) => `<th>${esc(l)}</th>`).join("") + "</tr>";
  const max = Math.max(1, ...c.matrix.flat());
  const rows = c.matrix.map((row, i) => `<tr><th>${esc(c.labels[i])}</th>` + row.map((v, j) =>
    `<td class="num" style="background:rgba(31,119,180,${(0.75 * v / max).toFixed(2)})">${v}</td>`).join("") + "</tr>").join("");
  return `<h3>Confusion matrix</h3><table id="confusion-matrix" class="confusion">${head}${rows}</table>`;
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
