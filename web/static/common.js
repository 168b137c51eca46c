// Shared by every page: authenticated fetch, a server-sent-events reader over fetch (so the bearer token can be
// sent, which EventSource cannot), filters in the URL, and formatting.
"use strict";

const Lumen = (() => {
  const TOKEN_KEY = "lumen-token";
  // Directions, event types, verdicts, drop reasons, protocols, TCP flags: as the agent defines them
  // (bpf/vocab.py, also at /api/vocabulary), rendered into the page so no script retypes them.
  const vocab = JSON.parse(document.getElementById("lumen-vocab").textContent);

  function headers() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  function showError(message) {
    const box = document.getElementById("error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  function askToken() {
    const form = document.getElementById("auth");
    if (!form.hidden) return;
    form.hidden = false;
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, document.getElementById("auth-token").value);
      location.reload();
    }, { once: true });
    document.getElementById("auth-token").focus();
  }

  async function check(resp) {
    if (resp.ok) return resp;
    if (resp.status === 401) askToken();
    let detail = resp.statusText;
    try { detail = (await resp.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(`${resp.status}: ${detail}`);
  }

  // Through `lumen relay`, an answer names the nodes that did not answer (`unreachable` in JSON objects,
  // the X-Lumen-Unreachable header on lists, a `nodes` event in a stream): say so above the page, so
  // that fewer flows are not taken for all of them.
  function showUnreachable(info) {
    const box = document.getElementById("partial");
    const names = (info && info.unreachable) || [];
    if (!names.length) {
      box.hidden = true;
      return;
    }
    const errors = info.errors || {};
    const why = names.map((n) => (errors[n] ? `${n} (${errors[n]})` : n)).join(", ");
    box.textContent = `Not shown: flows of ${names.length === 1 ? "node" : "nodes"} ${why}: not reachable.`;
    box.hidden = false;
  }

  async function getJSON(url) {
    const resp = await check(await fetch(url, { headers: headers() }));
    const body = await resp.json();
    const header = resp.headers.get("X-Lumen-Unreachable");
    if (header !== null) showUnreachable({ unreachable: header.split(",").filter(Boolean) });
    else if (body && Array.isArray(body.unreachable)) showUnreachable(body);
    return body;
  }

  function setConn(text) {
    document.getElementById("conn").textContent = text;
  }

  // Reads `url` as SSE until `signal` aborts; reconnects after network errors, not after HTTP errors
  // (a bad filter stays bad). onEvent(name, data) gets each event.
  async function stream(url, onEvent, signal, onOpen = null) {
    let delay = 500;
    while (!signal.aborted) {
      try {
        const resp = await check(await fetch(url, { headers: { ...headers(), Accept: "text/event-stream" }, signal }));
        setConn("live");
        showError("");
        if (onOpen) onOpen(); // the server has subscribed: what happens from now on arrives here
        delay = 500;
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          // One split per chunk: slicing the buffer per event would copy it once for every event in it.
          const blocks = (buf + value).split("\n\n");
          buf = blocks.pop();
          for (const block of blocks) {
            let name = "message";
            const data = [];
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) name = line.slice(6).trim();
              else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
            }
            if (data.length) onEvent(name, data.join("\n"));
          }
        }
        setConn("reconnecting…");
      } catch (err) {
        if (signal.aborted) return;
        if (/^\d{3}:/.test(err.message)) {
          setConn("stopped");
          showError(err.message);
          return;
        }
        setConn("reconnecting…");
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  }

  // Filter parameters of the page URL (everything but paging), as [name, value] pairs.
  function urlFilters() {
    return [...new URLSearchParams(location.search)].filter(([k]) => k !== "limit" && k !== "last");
  }

  // Link-local, multicast and unspecified traffic (neighbour discovery, MLD, DHCP) is hidden unless the page
  // URL says show_special=1 (one checkbox on Flows and the Service map) or the filters name `special`
  // themselves; the counters still count it.
  const SPECIAL_TOGGLE = "show_special";

  function showsSpecial() {
    return new URLSearchParams(location.search).has(SPECIAL_TOGGLE);
  }

  function apiFilters() {
    const url = urlFilters();
    const out = url.filter(([k]) => k !== SPECIAL_TOGGLE);
    if (!url.some(([k]) => k === SPECIAL_TOGGLE || k === "special" || k === "not_special")) {
      out.push(["special", "false"]);
    }
    return out;
  }

  // The checkbox `input` toggles show_special=1 in the page URL and calls `changed`.
  function specialToggle(input, changed) {
    input.checked = showsSpecial();
    input.addEventListener("change", () => {
      const keep = urlFilters().filter(([k]) => k !== SPECIAL_TOGGLE);
      if (input.checked) keep.push([SPECIAL_TOGGLE, "1"]);
      history.pushState(null, "", `${location.pathname}${query(keep)}`);
      changed();
    });
    window.addEventListener("popstate", () => {
      input.checked = showsSpecial();
    });
  }

  function query(pairs) {
    const qs = new URLSearchParams(pairs).toString();
    return qs ? `?${qs}` : "";
  }

  function bytes(n) {
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }

  // A duration in milliseconds as a person reads it: "2m 7s", "1h 5m", "3.2s", "850ms", "<1ms"
  // (exporter/render.py human_duration spells the CLI's the same way).
  function duration(ms) {
    if (!(ms > 0)) return "0s";
    if (ms < 1) return "<1ms";
    if (ms < 1000) return `${Math.floor(ms)}ms`;
    const s = ms / 1000;
    if (s < 10) return `${Number(s.toFixed(1))}s`;
    const total = Math.floor(s);
    if (total < 60) return `${total}s`;
    const d = Math.floor(total / 86400);
    const h = Math.floor((total % 86400) / 3600);
    const m = Math.floor((total % 3600) / 60);
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    return `${m}m ${total % 60}s`;
  }

  function endpoint(ep) {
    const addr = ep.ip.includes(":") ? `[${ep.ip}]` : ep.ip;
    return { name: ep.pod ? `${ep.namespace}/${ep.pod}` : "", addr: ep.port ? `${addr}:${ep.port}` : addr };
  }

  function time(iso) {
    // HH:MM:SS.mmm in local time; the full timestamp is in the detail panel.
    const d = new Date(iso);
    const pad = (v, n = 2) => String(v).padStart(n, "0");
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  function verdictBadge(verdict) {
    return el("span", { class: `badge v-${verdict.toLowerCase()}` }, verdict);
  }

  return {
    getJSON, stream, urlFilters, apiFilters, specialToggle, query, bytes, duration, endpoint, time, el,
    verdictBadge, showError, setConn,
    showUnreachable,
    vocab,
  };
})();
