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
  body.replaceChildren(...shown.map(runRow));
  document.getElementById("no-runs").hidden = runs.length > 0;
}

function runRow(r) {
  const box = h("input", {type: "checkbox", class: "pick", value: r.name, checked: picked.has(r.name)});
  box.addEventListener("change", () => { if (box.checked) picked.add(box.value); else picked.delete(box.value); });
  const model = String(r.model);
  return h("tr", {"data-name": r.name, "data-status": r.status},
    h("td", {}, box),
    h("td", {}, h("a", {href: "/run/" + encodeURI(r.name)}, r.name)), h("td", {}, r.task), h("td", {}, r.method),
    h("td", {class: "model", title: model}, model.split("/").slice(-1)[0]),
    h("td", {}, h("span", {class: "status " + r.status, title: r.error || ""}, r.status)),
    h("td", {class: "num"}, r.step, r.total ? " / " + r.total : ""),
    h("td", {class: "num"}, r.value === null ? "" : r.metric + " " + fmtNum(r.value)),
    h("td", {}, fmtTime(r.started)), h("td", {class: "num"}, fmtDuration(r.duration)));
}

function renderLaunches(launches) {
  document.querySelector("#launches tbody").replaceChildren(...launches.map((l) => h("tr", {class: "launch", "data-state": l.state},
    h("td", {}, fmtTime(l.started)), h("td", {}, h("code", {}, "leantune " + [].concat(l.argv || []).join(" "))),
    h("td", {}, l.state), h("td", {class: "error-line"}, l.error || ""))));
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
