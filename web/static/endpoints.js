// Endpoints page: the agent's endpoint records (/api/endpoints) joined with per-pod counters from the flow
// store (/api/map), refreshed every few seconds.
"use strict";

(() => {
  const REFRESH_MS = 3000;
  const tbody = document.querySelector("#endpoints tbody");
  const summary = document.getElementById("ep-summary");

  // Each label links to the flows of the pods that carry it (the label filter of the API).
  function labelsCell(labels) {
    const td = Lumen.el("td", { class: "labels" });
    for (const [k, v] of Object.entries(labels || {})) {
      const href = `/flows?label=${encodeURIComponent(`${k}=${v}`)}`;
      td.append(Lumen.el("a", { class: "label", href }, `${k}=${v}`), " ");
    }
    if (!td.childNodes.length) td.append("—");
    return td;
  }

  function text(v) {
    return v === undefined || v === null || v === "" ? "—" : String(v);
  }

  async function refresh() {
    try {
      const [eps, map] = await Promise.all([Lumen.getJSON("/api/endpoints"), Lumen.getJSON("/api/map")]);
      Lumen.setConn("live");
      Lumen.showError("");
      const counters = new Map(map.nodes.map((n) => [n.id, n]));
      eps.sort((a, b) => `${a.namespace}/${a.pod}`.localeCompare(`${b.namespace}/${b.pod}`));
      const rows = eps.map((ep) => {
        const id = `${ep.namespace}/${ep.pod}`;
        const c = counters.get(id) || { tx_packets: 0, tx_bytes: 0, rx_packets: 0, rx_bytes: 0, flows: 0, dropped: 0 };
        const iface = ep.hostVeth ? `${ep.hostVeth} (#${ep.hostIfindex})` : "";
        return Lumen.el(
          "tr",
          { "data-pod": id },
          Lumen.el("th", { scope: "row" }, Lumen.el("a", { href: `/flows?pod=${encodeURIComponent(id)}` }, id)),
          Lumen.el("td", {}, text(ep.workload && `${ep.workload.kind}/${ep.workload.name}`)),
          labelsCell(ep.labels),
          Lumen.el("td", {}, text((ep.ips || []).join(", "))),
          // the policy identity (label set) when the agent enforces policy; the endpoint id says which veth
          Lumen.el("td", { title: `endpoint id ${ep.endpointId}` }, text(ep.identity ?? "unmanaged")),
          Lumen.el("td", {}, text(iface)),
          Lumen.el("td", {}, text(ep.state)),
          Lumen.el("td", {}, Lumen.el("span", { class: `badge ${ep.attached ? "v-forwarded" : "v-dropped"}` },
            ep.attached ? "attached" : "not attached")),
          Lumen.el("td", { class: "num" }, `${c.tx_packets} pkts / ${Lumen.bytes(c.tx_bytes)}`),
          Lumen.el("td", { class: "num" }, `${c.rx_packets} pkts / ${Lumen.bytes(c.rx_bytes)}`),
          Lumen.el("td", { class: "num" }, String(c.flows)),
          Lumen.el("td", { class: "num" }, String(c.dropped)),
        );
      });
      tbody.replaceChildren(...rows);
      const attached = eps.filter((e) => e.attached).length;
      summary.textContent = `${eps.length} pods · ${attached} observed · counters from the stored flows`;
    } catch (err) {
      Lumen.setConn("error");
      Lumen.showError(err.message);
    }
  }

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
