// The playground: serve picked finished runs with leantune serve's engine, then prompt them (streamed chat),
// classify texts or answer a question from a context, through serve's own HTTP API.
"use strict";

const mount = document.getElementById("playground").dataset.mount;
let models = [];

async function loadChoices() {
  const d = await api("/api/playground");
  const choices = d.runs.map((r) => h("label", {class: "choice"},
    h("input", {type: "checkbox", value: r.name, checked: d.served.includes(r.served_as)}), " ", r.name, " ",
    h("span", {class: "muted"}, `(${r.task}, ${r.method})`)));
  document.getElementById("serve-choices").replaceChildren(...(choices.length ? choices :
    [h("p", {class: "muted"}, "No finished run yet.")]));
  document.getElementById("serving").textContent = d.served.length ? "serving: " + d.served.join(", ") : "";
  if (d.served.length) await loadModels();
}

async function loadModels() {
  const d = await api(mount + "/v1/models");
  models = d.data;
  const select = document.getElementById("model");
  select.replaceChildren(...models.map((m) => h("option", {value: m.id}, m.id, m.parent ? "" : " (base)")));
  const adapter = models.find((m) => m.parent);
  if (adapter) select.value = adapter.id;
  document.getElementById("try").hidden = false;
  showTask();
}

function currentTask() {
  const m = models.find((x) => x.id === document.getElementById("model").value);
  return m ? m.task : null;
}

function showTask() {
  const task = currentTask();
  document.getElementById("model-task").textContent = task ? "(" + task + ")" : "";
  document.querySelectorAll("form.task").forEach((f) => { f.hidden = f.dataset.task !== task; });
}

function serveError(data, status) {
  return (data && data.error && (data.error.message || data.error)) || ("HTTP " + status);
}

async function streamChat(model, prompt, maxTokens, temperature) {
  const out = document.getElementById("output");
  out.textContent = "";
  const resp = await fetch(mount + "/v1/chat/completions", {
    method: "POST", headers: postHeaders(),
    body: JSON.stringify({model, messages: [{role: "user", content: prompt}], max_tokens: maxTokens,
                          temperature, stream: true})});
  if (!resp.ok) {
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    throw new Error(serveError(data, resp.status));
  }
  const reader = resp.body.getReader(), decoder = new TextDecoder();
  let buffer = "", chunks = 0;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (!event.startsWith("data:")) continue;
      const payload = event.slice(5).trim();
      if (payload === "[DONE]") { out.dataset.done = "true"; out.dataset.chunks = String(chunks); return; }
      const msg = JSON.parse(payload);
      if (msg.error) throw new Error(serveError(msg, 500));
      const delta = msg.choices && msg.choices[0] && msg.choices[0].delta && msg.choices[0].delta.content;
      if (delta) { out.textContent += delta; chunks += 1; }
    }
  }
}

async function post(path, body) {
  const resp = await fetch(mount + path, {method: "POST", headers: postHeaders(),
                                          body: JSON.stringify(body)});
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) throw new Error(serveError(data, resp.status));
  return data;
}

function run(form, fn) {
  document.getElementById(form).addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError("");
    const out = document.getElementById("output");
    delete out.dataset.done;
    try { await fn(document.getElementById("model").value, out); } catch (e) { showError(e.message); }
  });
}

run("generate-form", (model) => streamChat(model, document.getElementById("prompt").value,
  parseInt(document.getElementById("max-tokens").value, 10), parseFloat(document.getElementById("temperature").value)));
run("classify-form", async (model, out) => {
  const texts = document.getElementById("texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  const d = await post("/v1/classify", {model, input: texts});
  const probabilities = (r) => Object.entries(r.probabilities || {}).map(([k, v]) => k + " " + Number(v).toFixed(3)).join(", ");
  out.replaceChildren(h("table", {id: "classified"},
    h("tr", {}, h("th", {}, "text"), h("th", {}, "label"), h("th", {}, "probabilities")),
    d.data.map((r) => h("tr", {}, h("td", {}, texts[r.index]), h("td", {class: "label"}, r.label),
                        h("td", {}, probabilities(r))))));
  out.dataset.done = "true";
});
run("answer-form", async (model, out) => {
  const d = await post("/v1/answer", {model, question: document.getElementById("question").value,
                                      context: document.getElementById("context").value});
  out.textContent = d.answer;
  out.dataset.done = "true";
});
document.getElementById("model").addEventListener("change", showTask);
document.getElementById("serve-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("");
  const picked = [...document.querySelectorAll("#serve-choices input:checked")].map((b) => b.value);
  const button = document.getElementById("serve");
  button.disabled = true;
  document.getElementById("serving").textContent = "loading…";
  try {
    await api("/api/playground/serve", {runs: picked});
    await loadChoices();
  } catch (e) {
    showError(e.message);
    document.getElementById("serving").textContent = "";
  } finally { button.disabled = false; }
});
loadChoices().catch((e) => showError(e.message));
