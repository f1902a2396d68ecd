// What every console page shares: the session's CSRF token on every POST, and small helpers.
"use strict";
window.Console = (() => {
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

  async function post(url, body) {
    const headers = { "X-CSRF-Token": csrf, "Accept": "application/json" };
    let payload = body;
    if (!(body instanceof FormData)) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body || {});
    }
    const resp = await fetch(url, { method: "POST", headers, body: payload, credentials: "same-origin" });
    const data = await resp.json().catch(() => ({ detail: `HTTP ${resp.status}` }));
    if (!resp.ok) throw new Error(data.detail || `HTTP ${resp.status}`);
    return data;
  }

  async function get(url) {
    const resp = await fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin" });
    if (resp.redirected && resp.url.includes("/console/login")) { window.location = resp.url; return null; }
    const data = await resp.json().catch(() => ({ detail: `HTTP ${resp.status}` }));
    if (!resp.ok) throw new Error(data.detail || `HTTP ${resp.status}`);
    return data;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    return node;
  }

  function escape(text) {
    return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                                                              "'": "&#39;" })[c]);
  }

  return { csrf, post, get, el, escape };
})();
