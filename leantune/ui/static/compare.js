// The comparison of picked runs: leantune compare's table and its Pareto and loss plots.
"use strict";

const picked = JSON.parse(document.getElementById("compare").dataset.runs);

async function showPicker() {
  const data = await api("/api/runs");
  document.getElementById("picker").hidden = false;
  document.getElementById("choices").replaceChildren(...data.runs.map((r) => h("label", {class: "choice"},
    h("input", {type: "checkbox", name: "runs", value: r.name}), " ", r.name, " ",
    h("span", {class: "muted"}, `(${r.method}, ${r.status})`))));
}

async function showComparison() {
  document.getElementById("picked").textContent = "runs: " + picked.join(", ");
  const d = await api("/api/compare?" + picked.map((n) => "runs=" + encodeURIComponent(n)).join("&"));
  const keys = Object.keys(d.columns);
  document.querySelector("#compare-table thead").replaceChildren(h("tr", {}, keys.map((k) => h("th", {}, d.columns[k]))));
  document.querySelector("#compare-table tbody").replaceChildren(...d.rows.map((r) =>
    h("tr", {class: r.status === "finished" ? "" : "failed"}, keys.map((k) => h("td", {}, r[k])))));
  document.getElementById("notes").textContent = `${d.metric}: ${d.higher_is_better ? "higher" : "lower"} is better.`;
  const base = `/compare-files/${encodeURIComponent(d.key)}/`;
  document.getElementById("plots").replaceChildren(...d.plots.map((p) =>
    h("figure", {}, h("img", {class: "plot", alt: p, src: base + encodeURIComponent(p) + "?t=" + Date.now()}))));
  const report = document.getElementById("report");
  report.href = base + encodeURIComponent(d.report);
  report.hidden = false;
}

(async () => {
  try {
    if (picked.length) await showComparison(); else await showPicker();
  } catch (e) { showError(e.message); }
})();
