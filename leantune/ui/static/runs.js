// The runs list: polled from /api/runs, sortable by any column, filtered by text; the launch form.
"use strict";

let runs = [], sortKey = "started", sortDesc = true;
const picked = new Set();

function renderRuns() {
  const text = document.getElementById("filter").value.toLowerCase();
  const shown = runs.filter((r) => !text || [r.name, r.task, r.method, r.model, r.status]
    .some((v) => String(v).toLowerCase().includes(text)));
  shown.sort((a, b) => {
    const x = a[sortKey], y = b[sortKey];
    const c = x === y ? 0 : (x === null || x === undefined) ? 1 : (y === null || y === undefined) ? -1 : (x < y ? -1 : 1);
    return sortDesc ? -c : c;
  });
  const body = document.querySelector("#runs tbody");
  body.innerHTML = shown.map((r) => `<tr data-name="${esc(r.name)}" data-status="${esc(r.status)}">
    <td><input type="checkbox" class="pick" value="${esc(r.name)}" ${picked.has(r.name) ? "checked" : ""}></td>
    <td><a href="/run/${encodeURI(r.name)}">${esc(r.name)}</a></td><td>${esc(r.task)}</td><td>${esc(r.method)}</td>
    <td class="model" title="${esc(r.model)}">${esc(r.model.split("/").slice(-1)[0])}</td>
    <td><span class="status ${esc(r.status)}" title="${esc(r.error || "")}">${esc(r.status)}</span></td>
    <td class="num">${r.step}${r.total ? " / " + r.total : ""}</td>
    <td class="num">${r.value === null ? "" : esc(r.metric) + " " + fmtNum(r.value)}</td>
    <td>${fmtTime(r.started)}</td><td class="num">${fmtDuration(r.duration)}</td></tr>`).join("");
  document.getElementById("no-runs").hidden = runs.length > 0;
  body.querySelectorAll(".pick").forEach((box) => box.addEventListener("change", () => {
    if (box.checked) picked.add(box.value); else picked.delete(box.value);
  }));
}

function renderLaunches(launches) {
  document.querySelector("#launches tbody").innerHTML = launches.map((l) => `<tr class="launch" data-state="${esc(l.state)}">
    <td>${fmtTime(l.started)}</td><td><code>leantune ${esc(l.argv.join(" "))}</code></td>
    <td>${esc(l.state)}</td><td class="error-line">${esc(l.error || "")}</td></tr>`).join("");
}

async function refresh() {
  const data = await api("/api/runs");
  runs = data.runs;
  renderRuns();
  renderLaunches(data.launches);
}

document.querySelectorAll("#runs th[data-key]").forEach((th) => th.addEventListener("click", () => {
  const key = th.dataset.key;
  sortDesc = key === sortKey ? !sortDesc : false;
  sortKey = key;
  renderRuns();
}));
document.getElementById("filter").addEventListener("input", renderRuns);
document.getElementById("compare-picked").addEventListener("click", () => {
  if (!picked.size) { showError("tick the runs to compare first"); return; }
  location.href = "/compare?" + [...picked].map((n) => "runs=" + encodeURIComponent(n)).join("&");
});
document.getElementById("launch").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("");
  try {
    await api("/api/launch", {
      config: document.getElementById("config").value,
      overrides: document.getElementById("overrides").value.split(/\s+/).filter(Boolean),
      nproc: parseInt(document.getElementById("nproc").value || "1", 10),
      overwrite: document.getElementById("overwrite").checked,
    });
    await refresh();
  } catch (e) { showError(e.message); }
});
poll(refresh, 1500);
