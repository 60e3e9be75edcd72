// The comparison of picked runs: leantune compare's table and its Pareto and loss plots.
"use strict";

const picked = JSON.parse(document.getElementById("compare").dataset.runs);

async function showPicker() {
  const data = await api("/api/runs");
  document.getElementById("picker").hidden = false;
  document.getElementById("choices").innerHTML = data.runs.map((r) =>
    `<label class="choice"><input type="checkbox" name="runs" value="${esc(r.name)}"> ${esc(r.name)} <span class="muted">(${esc(r.method)}, ${esc(r.status)})</span></label>`).join("");
}

async function showComparison() {
  document.getElementById("picked").textContent = "runs: " + picked.join(", ");
  const d = await api("/api/compare?" + picked.map((n) => "runs=" + encodeURIComponent(n)).join("&"));
  const keys = Object.keys(d.columns);
  document.querySelector("#compare-table thead").innerHTML = "<tr>" + keys.map((k) => `<th>${esc(d.columns[k])}</th>`).join("") + "</tr>";
  document.querySelector("#compare-table tbody").innerHTML = d.rows.map((r) =>
    `<tr class="${r.status === "finished" ? "" : "failed"}">` + keys.map((k) => `<td>${esc(r[k])}</td>`).join("") + "</tr>").join("");
  document.getElementById("notes").textContent = `${d.metric}: ${d.higher_is_better ? "higher" : "lower"} is better.`;
  document.getElementById("plots").innerHTML = d.plots.map((p) =>
    `<figure><img class="plot" alt="${esc(p)}" src="/compare-files/${d.key}/${encodeURIComponent(p)}?t=${Date.now()}"></figure>`).join("");
  const report = document.getElementById("report");
  report.href = `/compare-files/${d.key}/${d.report}`;
  report.hidden = false;
}

(async () => {
  try {
    if (picked.length) await showComparison(); else await showPicker();
  } catch (e) { showError(e.message); }
})();
