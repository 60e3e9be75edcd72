// Shared helpers of the dashboard's pages: JSON calls whose errors show in the page, formatting, polling.
"use strict";

async function api(url, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  let resp;
  try {
    resp = await fetch(url, opts);
  } catch (e) {
    throw new Error("the dashboard server does not answer (" + e.message + ")");
  }
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const detail = data && (data.error || (data.detail && JSON.stringify(data.detail)));
    throw new Error(detail || ("HTTP " + resp.status));
  }
  return data;
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = !message;
}

function esc(text) {
  const d = document.createElement("div");
  d.textContent = text === null || text === undefined ? "" : String(text);
  return d.innerHTML;
}

function fmtTime(ts) {
  if (!ts) return "";
  const d = new Date(ts * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fmtDuration(s) {
  if (s === null || s === undefined) return "";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}h ${m}m` : (m ? `${m}m ${sec}s` : `${sec}s`);
}

function fmtNum(v, digits) {
  if (v === null || v === undefined) return "";
  if (typeof v !== "number") return String(v);
  return Number.isInteger(v) ? String(v) : v.toFixed(digits === undefined ? 4 : digits);
}

// Calls fn now and every ms milliseconds, one call at a time; its errors show in the page.
function poll(fn, ms) {
  let busy = false;
  const tick = async () => {
    if (busy) return;
    busy = true;
    try { await fn(); } catch (e) { showError(e.message); } finally { busy = false; }
  };
  tick();
  return setInterval(tick, ms);
}
