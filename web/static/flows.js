// Flows page: a live table fed by /api/flows/stream. Events are queued and drawn once per animation frame,
// the queue and the table are both capped, so thousands of events per second cost one DOM update a frame.
// Below the live rows, older flows page in from /api/flows with the API's cursor, 100 at a time.
// By default a row is a connection (view=connections: client -> server:port, a request and its reply in one
// row, updated in place as either half changes); view=flows in the page URL shows each half apart.
"use strict";

(() => {
  const MAX_ROWS = 500; // live rows kept in the table (paged-in older rows add to it)
  const HARD_CAP = 20000; // rows kept at most, however many pages are loaded
  const PAGE = 100; // stored flows per page: the first when the page opens or the filters change
  const FORM_FIELDS = ["from_pod", "to_pod", "namespace", "ip", "port", "protocol", "verdict", "type", "since", "until"];

  const form = document.getElementById("filters");
  const tbody = document.querySelector("#flows tbody");
  const empty = document.getElementById("empty");
  const counts = document.getElementById("counts");
  const pauseBtn = document.getElementById("pause");
  const olderBtn = document.getElementById("older");
  const detail = document.getElementById("detail");
  const detailBody = document.getElementById("detail-body");
  const flowOf = new WeakMap(); // row -> flow JSON

  let pending = [];
  let received = 0;
  let skipped = 0; // arrived faster than drawn, or while paused, beyond the cap
  let lost = 0; // reported by the server: this stream read too slowly
  let paused = false;
  let pausedAt = 0;
  let frame = 0;
  let controller = null;
  let openRow = null;
  let maxRows = MAX_ROWS;
  let older = { cursor: null, done: false, loading: false, loaded: 0, trimmed: false, source: "", complete: true };
  let backlogReady = false; // live rows wait until the first page is drawn, so they land above it
  const shown = new Map(); // signature -> row: a flow paged in and streamed is one row; a connection's
  // newer state replaces its row

  // -- view: connections (default) or each half, kept in the URL -----------------------------------------

  const halvesBox = document.getElementById("halves");

  function view() {
    return new URLSearchParams(location.search).get("view") === "flows" ? "flows" : "connections";
  }

  function apiParams() {
    return [...Lumen.apiFilters().filter(([k]) => k !== "view"), ["view", view()]];
  }

  function isConn(f) {
    return f.client !== undefined;
  }

  function setHeaders() {
    const conn = view() === "connections";
    const th = document.querySelectorAll("#flows thead th");
    th[1].textContent = conn ? "Client" : "Source";
    th[2].textContent = conn ? "Server" : "Destination";
    th[10].textContent = conn ? "Reply" : "Event";
    halvesBox.checked = !conn;
    document.getElementById("flows").setAttribute(
      "aria-label", conn ? "Live connections, newest first" : "Live flows (each half of a connection), newest first");
  }

  // -- filters <-> URL -------------------------------------------------------------------------------

  // The page's toggles (view, show_special) live in the URL beside the filters, not in the filter form.
  const TOGGLES = ["view", "show_special"];

  function toggles() {
    return Lumen.urlFilters().filter(([k]) => TOGGLES.includes(k));
  }

  function fillForm() {
    const extra = [];
    const seen = new Set();
    for (const [k, v] of Lumen.urlFilters()) {
      if (TOGGLES.includes(k)) continue;
      if (FORM_FIELDS.includes(k) && !seen.has(k)) {
        form.elements[k].value = v;
        seen.add(k);
      } else {
        extra.push(`${k}=${v}`);
      }
    }
    form.elements.extra.value = extra.join(" ");
  }

  function formPairs() {
    const pairs = [];
    for (const name of FORM_FIELDS) {
      const v = form.elements[name].value.trim();
      if (v) pairs.push([name, v]);
    }
    for (const token of form.elements.extra.value.split(/\s+/)) {
      if (!token) continue;
      const at = token.indexOf("=");
      if (at <= 0) {
        Lumen.showError(`"${token}": expected name=value`);
        return null;
      }
      pairs.push([token.slice(0, at), token.slice(at + 1)]);
    }
    return [...pairs.filter(([k]) => !TOGGLES.includes(k)), ...toggles()];
  }

  // -- rendering ---------------------------------------------------------------------------------------

  function labelText(labels) {
    return Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(" ");
  }

  function endpointCell(ep) {
    const e = Lumen.endpoint(ep);
    const td = Lumen.el("td", { class: "ep", title: labelText(ep.labels) });
    if (e.name) td.append(Lumen.el("span", { class: "pod" }, e.name), " ");
    td.append(Lumen.el("span", { class: "addr" }, e.addr));
    return td;
  }

  function signature(f) {
    if (isConn(f)) return `c|${f.id}`;
    const ep = (e) => `${e.ip}:${e.port}`;
    return `${f.time}|${ep(f.source)}|${ep(f.destination)}|${f.protocol}|${f.direction}|${f.type}`;
  }

  // The policy column: which policy admitted it, that none did, or nothing when no policy isolates either
  // side (most flows of a cluster without policies).
  function policyText(f) {
    const pol = f.policy || {};
    if (pol.egress == null && pol.ingress == null && !f.is_reply) return "";
    return pol.summary || "";
  }

  // ICMP, ICMPv6, IGMP: the message by name (echo-request, neighbor-solicitation, ...), not ports
  function protocolText(f) {
    const msg = f.icmp || f.igmp;
    return msg ? `${f.protocol} ${msg.name}` : f.protocol;
  }

  function halfText(h) {
    return h ? `${h.packets} pkts, ${Lumen.bytes(h.bytes)}` : "none seen";
  }

  function connRow(c) {
    const replyCell = c.reply
      ? Lumen.el("td", { title: `reply: ${halfText(c.reply)}` }, "↔ yes")
      : Lumen.el("td", { class: "muted" }, "→ none");
    const tr = Lumen.el(
      "tr",
      { tabindex: "-1", class: `r-${c.verdict.toLowerCase()}`, "data-conn": c.id },
      Lumen.el("td", { class: "time" }, Lumen.time(c.time)),
      endpointCell(c.client),
      endpointCell(c.server),
      Lumen.el("td", {}, protocolText(c)),
      Lumen.el("td", { class: "flags" }, c.tcp_flags.join(" ")),
      Lumen.el("td", {}, Lumen.verdictBadge(c.verdict)),
      Lumen.el("td", {}, c.drop_reason === "none" ? "" : c.drop_reason),
      Lumen.el("td", { class: "policy", title: policyText(c) }, policyText(c)),
      Lumen.el("td", { class: "num" }, String(c.packets)),
      Lumen.el("td", { class: "num" }, Lumen.bytes(c.bytes)),
      replyCell,
    );
    flowOf.set(tr, c);
    tr.dataset.sig = signature(c);
    shown.set(tr.dataset.sig, tr);
    return tr;
  }

  function row(f) {
    if (isConn(f)) return connRow(f);
    const tr = Lumen.el(
      "tr",
      { tabindex: "-1", class: `r-${f.verdict.toLowerCase()}` },
      Lumen.el("td", { class: "time" }, Lumen.time(f.time)),
      endpointCell(f.source),
      endpointCell(f.destination),
      Lumen.el("td", {}, protocolText(f)),
      Lumen.el("td", { class: "flags" }, f.tcp_flags.join(" ")),
      Lumen.el("td", {}, Lumen.verdictBadge(f.verdict)),
      Lumen.el("td", {}, f.drop_reason === "none" ? "" : f.drop_reason),
      Lumen.el("td", { class: "policy", title: policyText(f) }, policyText(f)),
      Lumen.el("td", { class: "num" }, String(f.packets)),
      Lumen.el("td", { class: "num" }, Lumen.bytes(f.bytes)),
      Lumen.el("td", {}, f.is_reply ? `${f.type} ↩ reply` : f.type),
    );
    flowOf.set(tr, f);
    tr.dataset.sig = signature(f);
    shown.set(tr.dataset.sig, tr);
    return tr;
  }

  function removeRow(tr) {
    if (tr === openRow) closeDetail(false);
    shown.delete(tr.dataset.sig);
    tr.remove();
  }

  function showCounts() {
    const parts = [`${tbody.rows.length} shown`, `${received} received live`];
    if (older.loaded) parts.push(`${older.loaded} older loaded`);
    if (older.source === "history") parts.push("older flows from the flow history");
    if (!older.complete && older.source === "history") {
      parts.push("the range starts before the oldest flow kept (retention)");
    }
    if (skipped) parts.push(`${skipped} not drawn (rate above what the table shows)`);
    if (lost) parts.push(`${lost} lost by the server (stream too slow)`);
    if (paused) parts.push(`paused: ${received - pausedAt} new`);
    counts.textContent = parts.join(" · ");
  }

  function draw() {
    frame = 0;
    if (paused || !backlogReady) {
      showCounts();
      return;
    }
    // Events are parsed here, only those that will be drawn. A connection's newest state replaces its row.
    const latest = new Map();
    for (const data of pending) {
      const f = JSON.parse(data);
      const sig = signature(f);
      if (!isConn(f) && shown.has(sig)) continue;
      latest.delete(sig);
      latest.set(sig, f);
    }
    for (const sig of latest.keys()) {
      const old = shown.get(sig);
      if (old) removeRow(old);
    }
    const batch = [...latest.values()];
    pending = [];
    if (batch.length) {
      const frag = document.createDocumentFragment();
      for (let i = batch.length - 1; i >= 0; i--) frag.append(row(batch[i]));
      tbody.prepend(frag);
      while (tbody.rows.length > maxRows) {
        removeRow(tbody.lastElementChild);
        older.trimmed = true; // the cursor continued below the rows just removed
      }
      empty.hidden = true;
      ensureTabStop();
    }
    showCounts();
  }

  function schedule() {
    if (!frame) frame = requestAnimationFrame(draw);
  }

  function onEvent(name, data) {
    if (name === "nodes") {
      Lumen.showUnreachable(JSON.parse(data)); // from `lumen relay`: which nodes feed this stream
      return;
    }
    if (name === "lost") {
      lost = JSON.parse(data).dropped;
      return;
    }
    if (name !== "flow" && name !== "connection") return;
    received++;
    pending.push(data);
    if (pending.length > MAX_ROWS) {
      skipped += pending.length - MAX_ROWS;
      pending = pending.slice(-MAX_ROWS);
    }
    schedule();
  }

  // -- older flows: pages of /api/flows, newest first, continued with the API's cursor ----------------

  function olderParams() {
    const params = [["limit", String(PAGE)], ...apiParams().filter(([k]) => !older.trimmed || k !== "until")];
    if (older.trimmed) {
      // live rows pushed the bottom of the table out: continue from the oldest row still shown
      const last = tbody.lastElementChild && flowOf.get(tbody.lastElementChild);
      if (last) params.push(["until", last.time]);
    } else if (older.cursor) {
      params.push(["cursor", older.cursor]);
    }
    return params;
  }

  async function loadOlder(signal, first = false) {
    if (older.loading || older.done) return;
    older.loading = true;
    showOlder();
    try {
      const page = await Lumen.getJSON(`/api/flows${Lumen.query(olderParams())}`);
      if (signal.aborted) return;
      const records = page.connections || page.flows;
      const rows = records.slice().reverse().filter((f) => !shown.has(signature(f))); // newest first
      const frag = document.createDocumentFragment();
      for (const f of rows) frag.append(row(f));
      tbody.append(frag);
      if (!first) older.loaded += rows.length;
      maxRows = Math.min(HARD_CAP, Math.max(maxRows, tbody.rows.length));
      older.cursor = page.cursor;
      if (first) Object.assign(older, { source: page.source || "", complete: page.complete !== false });
      older.trimmed = false;
      older.done = !page.cursor;
      if (tbody.rows.length) empty.hidden = true;
      ensureTabStop();
    } catch (err) {
      if (!signal.aborted) Lumen.showError(`older flows: ${err.message}`);
    } finally {
      older.loading = false;
      if (first) {
        backlogReady = true;
        schedule();
      }
      showOlder();
      showCounts();
    }
  }

  function showOlder() {
    olderBtn.disabled = older.loading || older.done || tbody.rows.length >= HARD_CAP;
    olderBtn.textContent = older.loading
      ? "Loading…"
      : older.done
        ? "No older flows stored"
        : `Load ${PAGE} older flows`;
  }

  function start() {
    if (controller) controller.abort();
    controller = new AbortController();
    const signal = controller.signal;
    pending = [];
    received = skipped = lost = 0;
    maxRows = MAX_ROWS;
    older = { cursor: null, done: false, loading: false, loaded: 0, trimmed: false, source: "", complete: true };
    backlogReady = false;
    shown.clear();
    tbody.replaceChildren();
    empty.hidden = false;
    closeDetail(false);
    Lumen.showError("");
    // Live first, then the newest stored page: once the stream is open nothing falls between the two, and
    // a flow in both is drawn once.
    setHeaders();
    const url = `/api/flows/stream${Lumen.query(apiParams())}`;
    let opened = false;
    Lumen.stream(url, onEvent, signal, () => {
      if (!opened) {
        opened = true;
        loadOlder(signal, true);
      }
    });
    showOlder();
    showCounts();
  }

  function setPaused(on) {
    paused = on;
    pausedAt = received;
    pauseBtn.setAttribute("aria-pressed", String(on));
    pauseBtn.textContent = on ? "Resume" : "Pause";
    if (!on) schedule();
    showCounts();
  }

  // -- detail panel ----------------------------------------------------------------------------------

  function put(dl, term, value) {
    dl.append(Lumen.el("dt", {}, term), Lumen.el("dd", {}, value === "" || value == null ? "—" : String(value)));
  }

  function labels(obj) {
    const entries = Object.entries(obj || {});
    return entries.length ? entries.map(([k, v]) => `${k}=${v}`).join(", ") : "";
  }

  function sideText(p) {
    if (p === null || p === undefined) return "not isolated";
    return p === "" ? "no rule admits it" : p;
  }

  function putEndpoint(dl, side, ep) {
    const e = Lumen.endpoint(ep);
    put(dl, side, e.name ? `${e.name} (${e.addr})` : `${e.addr} (not a pod Lumen knows)`);
    put(dl, `${side} labels`, labels(ep.labels));
    if (ep.workload) put(dl, `${side} workload`, `${ep.workload.kind}/${ep.workload.name}`);
    if (ep.identity) put(dl, `${side} identity`, ep.identity);
    if (ep.node) put(dl, `${side} node`, ep.node); // a cross-node flow names both nodes
  }

  function windowLink(dl, f, ends) {
    // the record's own time window (a second wider each way: the JSON's times are rounded to microseconds),
    // with its two ends: what else they did while it lasted, from the history when memory no longer has it
    const at = (iso, ms) => new Date(new Date(iso).getTime() + ms).toISOString();
    const around = Lumen.query([
      ["since", at(f.start, -1000)], ["until", at(f.time, 1000)], ["ip", ends[0].ip], ["ip", ends[1].ip],
    ]);
    dl.append(
      Lumen.el("dt", {}, "Time window"),
      Lumen.el("dd", {}, Lumen.el("a", { href: `/flows${around}`, id: "flow-window" }, "flows of these ends while it lasted")),
    );
  }

  function connDetail(c) {
    const dl = Lumen.el("dl", { id: "detail-body" });
    put(dl, "Verdict", c.verdict);
    put(dl, "Drop reason", c.drop_reason === "none" ? "" : c.drop_reason);
    const pol = c.policy || {};
    put(dl, "Policy", pol.summary || "");
    put(dl, "Egress policy", sideText(pol.egress));
    put(dl, "Ingress policy", sideText(pol.ingress));
    put(dl, "Protocol", protocolText(c));
    if (c.server_port !== null) put(dl, "Server port", c.server_port);
    putEndpoint(dl, "Client", c.client);
    putEndpoint(dl, "Server", c.server);
    for (const [name, h] of [["Request", c.request], ["Reply", c.reply]]) {
      put(dl, name, h ? `${h.packets} pkts, ${Lumen.bytes(h.bytes)}, ${h.verdict}, ${h.type}${h.message ? `, ${h.message}` : ""}` +
        `${h.tcp_flags.length ? `, ${h.tcp_flags.join(" ")}` : ""}` : "none seen");
    }
    put(dl, "Started", c.start);
    put(dl, "Last packet", c.end);
    put(dl, "Duration", Lumen.duration(c.duration_ms));
    put(dl, "Packets", c.packets);
    put(dl, "Bytes", `${c.bytes} (${Lumen.bytes(c.bytes)})`);
    put(dl, "Finished", c.finished ? "yes" : "no");
    put(dl, "Node", c.node);
    windowLink(dl, c, [c.client, c.server]);
    return dl;
  }

  function openDetail(tr) {
    const f = flowOf.get(tr);
    if (!f) return;
    if (openRow) openRow.removeAttribute("aria-current");
    openRow = tr;
    tr.setAttribute("aria-current", "true");
    if (isConn(f)) {
      document.getElementById("detail-title").textContent = "Connection detail";
      document.getElementById("detail-body").replaceWith(connDetail(f));
      detail.hidden = false;
      return;
    }
    document.getElementById("detail-title").textContent = "Flow detail";
    const dl = Lumen.el("dl", { id: "detail-body" });
    put(dl, "Verdict", f.verdict);
    put(dl, "Drop reason", f.drop_reason === "none" ? "" : f.drop_reason);
    // The agent says which policy admitted each isolated side, or that none did.
    const pol = f.policy || {};
    put(dl, "Policy", pol.summary || "");
    put(dl, "Egress policy", sideText(pol.egress));
    put(dl, "Ingress policy", sideText(pol.ingress));
    put(dl, "Reply", f.is_reply ? "yes (answer of a connection seen the other way)" : "no");
    put(dl, "Event", f.type);
    put(dl, "Time", f.time);
    put(dl, "Flow start", f.start);
    put(dl, "Last seen", f.end);
    put(dl, "Duration", Lumen.duration(f.duration_ms));
    put(dl, "Protocol", protocolText(f));
    put(dl, "Direction", f.direction);
    for (const [side, ep] of [["Source", f.source], ["Destination", f.destination]]) putEndpoint(dl, side, ep);
    put(dl, "TCP flags seen", f.tcp_flags.join(" "));
    put(dl, "Packets", f.packets);
    put(dl, "Bytes", `${f.bytes} (${Lumen.bytes(f.bytes)})`);
    put(dl, "Payload bytes", f.payload_bytes);
    put(dl, "Interface index", f.ifindex);
    // Through the relay, a cross-node flow is one row for both ends: each node counted its own end.
    if (f.paired) {
      put(dl, "Nodes", `${f.source_node} → ${f.destination_node}`);
      for (const [end, e] of Object.entries(f.ends)) {
        put(dl, `${end === "egress" ? "Egress" : "Ingress"} end`,
          `${e.node}: ${e.verdict}${e.drop_reason && e.drop_reason !== "none" ? ` (${e.drop_reason})` : ""}, ` +
          `${e.packets} pkts, ${Lumen.bytes(e.bytes)}, ${e.type}`);
      }
    } else {
      put(dl, "Node", f.node);
    }
    windowLink(dl, f, [f.source, f.destination]);
    document.getElementById("detail-body").replaceWith(dl);
    detail.hidden = false;
  }

  function closeDetail(refocus = true) {
    detail.hidden = true;
    const was = openRow;
    openRow = null;
    if (was) {
      was.removeAttribute("aria-current");
      if (refocus && was.isConnected) was.focus();
    }
  }

  // -- keyboard --------------------------------------------------------------------------------------

  // One tab stop in the table: the newest row, or the row the user is on while focus is in the table.
  function ensureTabStop() {
    const first = tbody.firstElementChild;
    if (!first || tbody.contains(document.activeElement)) return;
    for (const r of tbody.querySelectorAll('tr[tabindex="0"]')) r.tabIndex = -1;
    first.tabIndex = 0;
  }

  function focusRow(tr) {
    if (!tr) return;
    for (const r of tbody.querySelectorAll('tr[tabindex="0"]')) r.tabIndex = -1;
    tr.tabIndex = 0;
    tr.focus();
  }

  tbody.addEventListener("keydown", (ev) => {
    const tr = ev.target.closest("tr");
    if (!tr) return;
    const moves = {
      ArrowDown: tr.nextElementSibling, j: tr.nextElementSibling,
      ArrowUp: tr.previousElementSibling, k: tr.previousElementSibling,
      Home: tbody.firstElementChild, End: tbody.lastElementChild,
    };
    if (ev.key in moves) {
      ev.preventDefault();
      focusRow(moves[ev.key]);
    } else if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      openDetail(tr);
    }
  });

  tbody.addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr");
    if (tr) {
      focusRow(tr);
      openDetail(tr);
    }
  });

  document.addEventListener("keydown", (ev) => {
    const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(ev.target.tagName);
    if (ev.key === "Escape" && !detail.hidden) {
      closeDetail();
    } else if (ev.key === "/" && !typing) {
      ev.preventDefault();
      form.elements.from_pod.focus();
    } else if (ev.key === "p" && !typing) {
      setPaused(!paused);
    }
  });

  // -- wiring ----------------------------------------------------------------------------------------

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const pairs = formPairs();
    if (pairs === null) return;
    history.pushState(null, "", `${location.pathname}${Lumen.query(pairs)}`);
    start();
  });
  document.getElementById("clear").addEventListener("click", () => {
    form.reset();
    history.pushState(null, "", `${location.pathname}${Lumen.query(toggles())}`);
    fillForm();
    start();
  });
  window.addEventListener("popstate", () => {
    fillForm();
    start();
  });
  pauseBtn.addEventListener("click", () => setPaused(!paused));
  halvesBox.addEventListener("change", () => {
    const keep = Lumen.urlFilters().filter(([k]) => k !== "view");
    if (halvesBox.checked) keep.push(["view", "flows"]);
    history.pushState(null, "", `${location.pathname}${Lumen.query(keep)}`);
    start();
  });
  Lumen.specialToggle(document.getElementById("show-special"), start);
  olderBtn.addEventListener("click", () => loadOlder(controller.signal));
  document.getElementById("detail-close").addEventListener("click", () => closeDetail());

  fillForm();
  start();
})();
