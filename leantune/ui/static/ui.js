// Shared helpers of the dashboard's pages: JSON calls whose errors show in the page, building elements from data
// (text is always a text node, never parsed as HTML), formatting, polling.
"use strict";

// The headers of a state-changing call: JSON, and this server's CSRF token from the page.
function postHeaders() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return {"Content-Type": "application/json", "X-CSRF-Token": meta ? meta.content : ""};
}

async function api(url, body) {
  const opts = body === undefined ? {} : {method: "POST", headers: postHeaders(), body: JSON.stringify(body)};
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

function build(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// An HTML element: h("td", {class: "num"}, "text", otherNode, [more]); strings become text nodes.
function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

// An SVG element, as h().
function svgNode(tag, attrs, ...children) {
  return build(document.createElementNS("http://www.w3.org/2000/svg", tag), attrs, children);
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = !message;
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
