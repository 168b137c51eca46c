// Service map: /api/map (aggregated on the server) drawn as SVG. Deterministic layout: one column block
// per namespace in name order (endpoints outside the node's pods last), pods stacked by name and wrapped
// into sub-columns, so the same traffic always gives the same picture. Each edge is a link to its flows.
"use strict";

(() => {
  const REFRESH_MS = 2000;
  const ROWS = 14; // pods per sub-column
  const COL_W = 210;
  const GAP = 60; // between namespaces
  const ROW_H = 34;
  const NODE_W = 160;
  const NODE_H = 24;
  const TOP = 44;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const svg = document.getElementById("map");
  const rangeForm = document.getElementById("range-form");
  const tbody = document.querySelector("#edges tbody");
  const summary = document.getElementById("map-summary");
  let last = "";

  function s(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function layout(nodes) {
    const groups = new Map();
    for (const n of nodes) {
      const g = n.namespace || "outside the node's pods";
      if (!groups.has(g)) groups.set(g, []);
      groups.get(g).push(n);
    }
    const pos = new Map();
    const blocks = [];
    let x = 20;
    let height = 0;
    for (const [name, members] of groups) {
      const cols = Math.ceil(members.length / ROWS);
      members.forEach((n, i) => {
        pos.set(n.id, { x: x + Math.floor(i / ROWS) * COL_W, y: TOP + (i % ROWS) * ROW_H });
      });
      const w = (cols - 1) * COL_W + NODE_W;
      blocks.push({ name, x, w, rows: Math.min(members.length, ROWS) });
      height = Math.max(height, TOP + Math.min(members.length, ROWS) * ROW_H);
      x += w + GAP;
    }
    return { pos, blocks, width: x, height: height + 20 };
  }

  // Width from the rate on a log scale: 1 B/s -> 1.5 px, 100 MB/s -> 9.5 px.
  function strokeWidth(rate) {
    return (1.5 + Math.min(8, Math.log10(1 + rate))).toFixed(2);
  }

  function flowsLink(nodesById, e) {
    const side = (id, prefix) => {
      const n = nodesById.get(id);
      return n.pod ? [`${prefix}_pod`, n.id] : [`${prefix}_ip`, n.ips[0]];
    };
    // the map's time range goes with it: an edge of a past window opens that window's flows
    const range = Lumen.urlFilters().filter(([k]) => k === "since" || k === "until");
    return `/flows${Lumen.query([side(e.source, "from"), side(e.destination, "to"), ["verdict", e.verdict.toLowerCase()], ...range])}`;
  }

  function describe(e) {
    return `${e.source} to ${e.destination}, ${e.verdict}, ${Lumen.bytes(e.bytes_per_s)}/s, ${e.flows} flows`;
  }

  function drawSvg(data, nodesById) {
    const { pos, blocks, width, height } = layout(data.nodes);
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${Math.max(width, 400)} ${Math.max(height, 120)}`);
    svg.setAttribute("width", Math.max(width, 400));
    svg.setAttribute("height", Math.max(height, 120));
    for (const b of blocks) {
      svg.append(
        s("rect", { class: "ns", x: b.x - 10, y: 8, width: b.w + 20, height: TOP - 12 + b.rows * ROW_H, rx: 8 }),
        s("text", { class: "ns-label", x: b.x, y: 28 }, b.name),
      );
    }
    const edges = s("g", { class: "edges" });
    for (const e of data.edges) {
      // Edges of one pair with different verdicts run side by side instead of on top of each other.
      const shift = [0, 5, -5][Lumen.vocab.verdicts.indexOf(e.verdict)] || 0;
      const a = { ...pos.get(e.source) };
      const b = { ...pos.get(e.destination) };
      a.y += shift;
      b.y += shift;
      let d;
      if (e.source === e.destination) {
        const x = a.x + NODE_W;
        const y = a.y + NODE_H / 2;
        d = `M${x},${y - 6} C${x + 40},${y - 30} ${x + 40},${y + 30} ${x},${y + 6}`;
      } else if (a.x === b.x) {
        // Same column: bow out to the right, further for pods further apart.
        const x = a.x + NODE_W;
        const bow = 30 + Math.abs(a.y - b.y) / 4;
        d = `M${x},${a.y + NODE_H / 2} C${x + bow},${a.y + NODE_H / 2} ${x + bow},${b.y + NODE_H / 2} ${x},${b.y + NODE_H / 2}`;
      } else {
        const forward = a.x < b.x;
        const x1 = forward ? a.x + NODE_W : a.x;
        const x2 = forward ? b.x : b.x + NODE_W;
        const y1 = a.y + NODE_H / 2;
        const y2 = b.y + NODE_H / 2;
        const c = Math.max(40, Math.abs(x2 - x1) / 2) * (forward ? 1 : -1);
        d = `M${x1},${y1} C${x1 + c},${y1} ${x2 - c},${y2} ${x2},${y2}`;
      }
      const link = s("a", {
        href: flowsLink(nodesById, e),
        class: `edge v-${e.verdict.toLowerCase()}`,
        "data-source": e.source,
        "data-destination": e.destination,
        "data-verdict": e.verdict,
        "aria-label": describe(e),
      });
      link.append(
        s("title", {}, describe(e)),
        s("path", { class: "hit", d }),
        s("path", { class: "line", d, "stroke-width": strokeWidth(e.bytes_per_s), "marker-end": "url(#arrow)" }),
      );
      edges.append(link);
    }
    const defs = s("defs");
    const marker = s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 9, markerHeight: 9, orient: "auto", markerUnits: "userSpaceOnUse" });
    marker.append(s("path", { d: "M0,0 L10,5 L0,10 z", class: "arrow" }));
    defs.append(marker);
    svg.append(defs, edges);
    for (const n of data.nodes) {
      const p = pos.get(n.id);
      const g = s("g", { class: `node${n.pod ? "" : " external"}${n.dropped ? " has-drops" : ""}`, "data-id": n.id });
      g.append(
        s("title", {}, `${n.id}\n${n.ips.join(", ")}\nsent ${Lumen.bytes(n.tx_bytes)}, received ${Lumen.bytes(n.rx_bytes)}`),
        s("rect", { x: p.x, y: p.y, width: NODE_W, height: NODE_H, rx: 5 }),
        s("text", { x: p.x + 8, y: p.y + 16 }, n.name.length > 22 ? `${n.name.slice(0, 21)}…` : n.name),
      );
      svg.append(g);
    }
  }

  function drawTable(data, nodesById) {
    const rows = data.edges.map((e) =>
      Lumen.el(
        "tr",
        { "data-source": e.source, "data-destination": e.destination },
        Lumen.el("td", {}, Lumen.el("a", { href: flowsLink(nodesById, e) }, e.source)),
        Lumen.el("td", {}, e.destination),
        Lumen.el("td", {}, Lumen.verdictBadge(e.verdict)),
        Lumen.el("td", { class: "num" }, `${Lumen.bytes(e.bytes_per_s)}/s`),
        Lumen.el("td", { class: "num" }, String(e.flows)),
        Lumen.el("td", { class: "num" }, Lumen.bytes(e.bytes)),
        // the server's ports only: replies are drawn on their request's edge
        Lumen.el("td", {}, [e.protocols.join(" "), e.ports.join(", "), (e.messages || []).join(", ")].filter(Boolean).join(" ")),
        Lumen.el("td", {}, e.drop_reasons.join(", ")),
      ),
    );
    tbody.replaceChildren(...rows);
  }

  async function refresh() {
    try {
      const data = await Lumen.getJSON(`/api/map${Lumen.query(Lumen.apiFilters())}`);
      Lumen.setConn("live");
      Lumen.showError("");
      const text = JSON.stringify([data.nodes, data.edges]);
      if (text !== last) {
        // Redraw only on change, so keyboard focus on an edge survives the refresh.
        const focused = document.activeElement?.closest?.("a.edge")?.getAttribute("aria-label");
        last = text;
        const nodesById = new Map(data.nodes.map((n) => [n.id, n]));
        drawSvg(data, nodesById);
        drawTable(data, nodesById);
        if (focused) {
          [...svg.querySelectorAll("a.edge")].find((a) => a.getAttribute("aria-label") === focused)?.focus();
        }
      }
      const from = data.source === "history"
        ? `from the flow history${data.complete === false ? " (the range starts before the oldest flow kept)" : ""}`
        : `from ${data.stored} stored flows`;
      summary.textContent = `${data.nodes.length} endpoints · ${data.edges.length} edges · ${from}`;
    } catch (err) {
      Lumen.setConn("error");
      Lumen.showError(err.message);
    }
  }

  // -- time range: since/until in the page URL, with the other filters kept ------------------------------

  function fillRange() {
    const params = new URLSearchParams(location.search);
    for (const name of ["since", "until"]) rangeForm.elements[name].value = params.get(name) || "";
  }

  function setRange(pairs) {
    const keep = Lumen.urlFilters().filter(([k]) => k !== "since" && k !== "until");
    history.pushState(null, "", `${location.pathname}${Lumen.query([...keep, ...pairs])}`);
    last = "";
    refresh();
  }

  rangeForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    setRange(["since", "until"].map((k) => [k, rangeForm.elements[k].value.trim()]).filter(([, v]) => v));
  });
  document.getElementById("range-live").addEventListener("click", () => {
    rangeForm.reset();
    setRange([]);
  });
  window.addEventListener("popstate", () => {
    fillRange();
    last = "";
    refresh();
  });

  Lumen.specialToggle(document.getElementById("show-special"), () => {
    last = "";
    refresh();
  });
  fillRange();
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
