// vrouter ui: the cluster map, the flow table, the pod panel, the trace form and the nodes'
// counters, kept live by the server's event stream (/events). Every text from the cluster is put
// into the page as text (textContent, canvas labels), never as HTML.
"use strict";

const MAX_FLOWS = 2000;       // kept in the page
const MAX_ROWS = 300;         // shown in the table
const HISTORY = 60;           // samples per node chart
const NODE_WIDTH = 320;

const page = {
  model: null, flows: [], filter: {}, namespace: "", status: {}, history: {}, cy: null,
  edges: new Map(), lost: 0,
};
window.vrouter = page;        // for the browser tests and the curious

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

// --- flows as `vrouter observe` prints them ---------------------------------------------------

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

function timestamp(flow) {
  const t = new Date((flow.time_ns || 0) / 1e6);
  const pad = (n, w) => String(n).padStart(w, "0");
  return `${MONTHS[t.getMonth()]} ${String(t.getDate()).padStart(2, " ")} ` +
    `${pad(t.getHours(), 2)}:${pad(t.getMinutes(), 2)}:${pad(t.getSeconds(), 2)}.` +
    pad(t.getMilliseconds(), 3);
}

function l4(flow) {
  const layer = flow.l4 || {};
  return layer.TCP || layer.UDP || layer.ICMPv4 || {};
}

function host(endpoint, ip, port) {
  const name = endpoint && endpoint.pod_name ? `${endpoint.namespace}/${endpoint.pod_name}` : ip;
  return port ? `${name}:${port}` : name;
}

function hosts(flow) {
  const ip = flow.IP || {}, ports = l4(flow);
  return [host(flow.source, ip.source, ports.source_port),
          host(flow.destination, ip.destination, ports.destination_port)];
}

function arrow(flow) {
  return flow.is_reply === null || flow.is_reply === undefined ? "<>"
    : flow.is_reply ? "<-" : "->";
}

function policyNames(flow) {
  return [...(flow.ingress_denied_by || []), ...(flow.egress_denied_by || [])]
    .map(p => `${p.namespace}/${p.name}`);
}

// the filter the server parsed (/api/filter), applied as vrouter.node.flowfilter applies it
function named(namespace, name, wanted) {
  const cut = wanted.lastIndexOf("/");
  const ns = cut >= 0 ? wanted.slice(0, cut) : "default";
  return !!name && namespace === ns && name.startsWith(wanted.slice(cut + 1));
}

function podIs(endpoint, wanted) {
  return named((endpoint || {}).namespace, (endpoint || {}).pod_name, wanted);
}

function matches(spec, flow) {
  const src = flow.source || {}, dst = flow.destination || {}, svc = flow.destination_service || {};
  const any = (values, test) => !values || values.some(test);
  return any(spec.pod, p => podIs(src, p) || podIs(dst, p))
    && any(spec.from_pod, p => podIs(src, p))
    && any(spec.to_pod, p => podIs(dst, p))
    && any(spec.service, s => named(svc.namespace, svc.name, s))
    && any(spec.namespace, n => [src.namespace, dst.namespace, svc.namespace].includes(n))
    && any(spec.verdict, v => flow.verdict === v)
    && any(spec.event, e => flow.event === e)
    && any(spec.protocol, p => flow.protocol === p)
    && any(spec.port, p => (flow.ports || []).includes(p))
    && any(spec.node, n => flow.node_name === n)
    && (spec.since === undefined || flow.time_ns >= spec.since * 1e9);
}

function inNamespace(flow) {
  if (!page.namespace) return true;
  const ns = [(flow.source || {}).namespace, (flow.destination || {}).namespace,
              (flow.destination_service || {}).namespace];
  return ns.includes(page.namespace);
}

function renderTable() {
  const rows = $("flow-rows");
  const shown = [];
  for (let k = page.flows.length - 1; k >= 0 && shown.length < MAX_ROWS; k--) {
    const f = page.flows[k];
    if (inNamespace(f) && matches(page.filter, f)) shown.push(f);
  }
  const fragment = document.createDocumentFragment();
  for (const f of shown) {
    const [src, dst] = hosts(f);
    const tr = el("tr", undefined, `verdict-${f.verdict}`);
    tr.dataset.event = f.event;
    for (const [text, cls] of [[timestamp(f)], [f.node_name], [src], [arrow(f)], [dst],
                               [f.type], [f.verdict, "verdict"], [f.Summary, "summary"]]) {
      tr.appendChild(el("td", text, cls));
    }
    fragment.appendChild(tr);
  }
  rows.replaceChildren(fragment);
  $("flow-count").textContent = `${shown.length} shown of ${page.flows.length}` +
    (page.lost ? `, ${page.lost} lost` : "");
}

function addFlows(flows) {
  for (const f of flows) {
    // by time: each node's flows come in order, the nodes' streams interleave
    let k = page.flows.length;
    while (k > 0 && (page.flows[k - 1].time_ns || 0) > (f.time_ns || 0)) k--;
    page.flows.splice(k, 0, f);
    countEdge(f);
  }
  if (page.flows.length > MAX_FLOWS) page.flows.splice(0, page.flows.length - MAX_FLOWS);
  renderTable();
}
page.addFlows = addFlows;
page.renderTable = renderTable;

let filterTimer = null;
function filterChanged() {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(async () => {
    const q = $("flow-filter").value;
    const answer = await (await fetch(`/api/filter?q=${encodeURIComponent(q)}`)).json();
    $("flow-filter-error").textContent = answer.ok ? "" : answer.error;
    if (answer.ok) { page.filter = answer.filter; renderTable(); }
  }, 150);
}

// --- the map --------------------------------------------------------------------------------------

const STYLE = [
  { selector: "node", style: { "label": "data(label)", "font-size": 11, "color": "#1d2733",
      "text-valign": "center", "text-halign": "center", "text-wrap": "wrap" } },
  { selector: "node[kind = 'cnode']", style: { "shape": "round-rectangle",
      "background-color": "#e8eff6", "border-color": "#5b7a99", "border-width": 2,
      "text-valign": "top", "font-size": 13, "font-weight": "bold", "padding": "12px" } },
  { selector: "node[kind = 'ns']", style: { "shape": "round-rectangle",
      "background-color": "#ffffff", "border-color": "#9fb3c8", "border-width": 1,
      "border-style": "dashed", "text-valign": "top", "font-size": 10, "color": "#51606e",
      "padding": "8px" } },
  { selector: "node[kind = 'pod']", style: { "shape": "round-rectangle", "width": 124,
      "height": 26, "background-color": "#cfe3f7", "border-color": "#4f81b3",
      "border-width": 1, "font-size": 10 } },
  { selector: "node[kind = 'pod'][?dns]", style: { "background-color": "#e0e0e0" } },
  { selector: "node[kind = 'svc']", style: { "shape": "round-tag", "width": 130, "height": 34,
      "background-color": "#fde7c8", "border-color": "#c77c12", "border-width": 1,
      "font-size": 10 } },
  { selector: "node[kind = 'ext']", style: { "shape": "ellipse", "width": 90, "height": 30,
      "background-color": "#eeeeee", "border-color": "#9e9e9e", "border-width": 1 } },
  { selector: "edge", style: { "curve-style": "bezier", "width": 1.5, "line-color": "#78909c",
      "target-arrow-shape": "triangle", "target-arrow-color": "#78909c", "arrow-scale": 0.8,
      "font-size": 9, "label": "data(label)", "text-background-color": "#ffffff",
      "text-background-opacity": 0.85, "text-background-padding": "1px", "color": "#37474f" } },
  { selector: "edge.backend", style: { "line-style": "dashed", "line-color": "#d7b98a",
      "target-arrow-color": "#d7b98a", "width": 1, "label": "" } },
  { selector: "edge.dropped", style: { "line-color": "#c62828", "target-arrow-color": "#c62828",
      "color": "#c62828", "target-arrow-shape": "tee" } },
  { selector: "node.traced", style: { "border-color": "#1565c0", "border-width": 4 } },
  { selector: "edge.traced", style: { "line-color": "#1565c0", "target-arrow-color": "#1565c0",
      "width": 4, "z-index": 99, "color": "#1565c0" } },
  { selector: ".hidden", style: { "display": "none" } },
  { selector: ":selected", style: { "border-color": "#ff8f00", "border-width": 3 } },
];

function endpointId(endpoint, ip) {
  if (endpoint && endpoint.pod_name) return `pod:${endpoint.namespace}/${endpoint.pod_name}`;
  const labels = (endpoint && endpoint.labels) || [];
  if (endpoint && endpoint.node_name) return `cnode:${endpoint.node_name}`;
  if (labels.includes("reserved:world")) return "ext:world";
  return `ext:${ip}`;
}

function ensureNode(id, label) {
  if (!page.cy || page.cy.getElementById(id).nonempty()) return;
  const extras = page.cy.nodes("[kind = 'ext']").length;
  page.cy.add({ group: "nodes", data: { id, label, kind: "ext" },
                position: { x: -170, y: 40 + 60 * extras } });
}

function countEdge(flow) {
  if (flow.event === "end") return;   // a connection is counted once, when it starts
  const ip = flow.IP || {};
  const source = endpointId(flow.source, ip.source);
  const svc = flow.destination_service;
  const target = svc ? `svc:${svc.namespace}/${svc.name}` : endpointId(flow.destination, ip.destination);
  const dropped = flow.verdict === "DROPPED" || flow.verdict === "REJECTED";
  const port = l4(flow).destination_port;
  const what = `${flow.protocol}${port ? "/" + port : ""}`;
  const key = `${source}|${target}|${what}|${dropped ? flow.verdict : "ok"}`;
  let edge = page.edges.get(key);
  if (!edge) {
    edge = { id: `flow${page.edges.size}`, source, target, what, count: 0, dropped,
             policies: new Set(), namespaces: new Set() };
    page.edges.set(key, edge);
  }
  edge.count += 1;
  for (const p of policyNames(flow)) edge.policies.add(p);
  for (const e of [flow.source, flow.destination, svc]) if (e && e.namespace) edge.namespaces.add(e.namespace);
  drawEdge(edge);
}

function edgeLabel(edge) {
  const policies = [...edge.policies];
  return `${edge.count}× ${edge.what}` + (edge.dropped
    ? ` ✕ ${policies.length ? policies.join(", ") : "refused"}` : "");
}

function drawEdge(edge) {
  const cy = page.cy;
  if (!cy) return;
  for (const end of [edge.source, edge.target]) {
    if (cy.getElementById(end).empty()) ensureNode(end, end.startsWith("ext:world") ? "outside" : end.slice(4));
  }
  const existing = cy.getElementById(edge.id);
  if (existing.nonempty()) {
    existing.data("label", edgeLabel(edge));
    return;
  }
  cy.add({ group: "edges", classes: "flow" + (edge.dropped ? " dropped" : ""),
           data: { id: edge.id, source: edge.source, target: edge.target, label: edgeLabel(edge),
                   namespaces: [...edge.namespaces] } });
  applyNamespace();
}

function buildMap(model) {
  const elements = [];
  const nodes = model.nodes.map(n => n.name);
  nodes.forEach((name, k) => {
    const info = model.nodes[k];
    elements.push({ group: "nodes", data: { id: `cnode:${name}`, kind: "cnode",
                    label: `${name}  ${info.podCIDR}${info.kernel ? " (kernel)" : ""}` } });
    const namespaces = [...new Set(model.pods.filter(p => p.node === name).map(p => p.namespace))].sort();
    let y = 60;
    for (const ns of namespaces) {
      elements.push({ group: "nodes", data: { id: `ns:${name}:${ns}`, parent: `cnode:${name}`,
                      kind: "ns", label: ns, namespace: ns } });
      const pods = model.pods.filter(p => p.node === name && p.namespace === ns);
      pods.forEach((p, j) => {
        elements.push({ group: "nodes", position: { x: k * NODE_WIDTH + (j % 2) * 138,
                                                      y: y + Math.floor(j / 2) * 40 },
                        data: { id: `pod:${p.id}`, parent: `ns:${name}:${ns}`, kind: "pod",
                                label: p.name, namespace: ns, dns: p.dns, pod: p } });
      });
      y += Math.ceil(pods.length / 2) * 40 + 50;
    }
  });
  model.services.forEach((s, k) => {
    const ports = s.ports.map(p => `${p.port}/${p.protocol.toLowerCase()}`).join(" ");
    elements.push({ group: "nodes", position: { x: nodes.length * NODE_WIDTH + 40, y: 40 + k * 56 },
                    data: { id: `svc:${s.id}`, kind: "svc", namespace: s.namespace,
                            label: `${s.id}\n${s.clusterIP || "headless"} ${ports}`, svc: s } });
    for (const backend of s.backends) {
      elements.push({ group: "edges", classes: "backend",
                      data: { id: `be:${s.id}>${backend}`, source: `svc:${s.id}`,
                              target: `pod:${backend}`, namespaces: [s.namespace] } });
    }
  });
  if (page.cy) page.cy.destroy();
  page.cy = cytoscape({ container: $("map"), elements, style: STYLE,
                        layout: { name: "preset", fit: true, padding: 24 },
                        minZoom: 0.2, maxZoom: 3 });
  for (const edge of page.edges.values()) drawEdge(edge);
  page.cy.fit(undefined, 24);
  const tooltip = $("tooltip");
  page.cy.on("mouseover", "node[kind = 'pod'], node[kind = 'svc']", event => {
    const d = event.target.data();
    const lines = d.pod
      ? [`${d.pod.id}  ${d.pod.ip}  on ${d.pod.node}`,
         ...Object.entries(d.pod.labels).map(([k, v]) => `${k}=${v}`)]
      : [`Service ${d.svc.id} (${d.svc.type})`, ...d.svc.backends.map(b => `-> ${b}`)];
    tooltip.textContent = lines.join("\n");
    const p = event.renderedPosition;
    tooltip.style.left = `${p.x + 14}px`;
    tooltip.style.top = `${p.y + 10}px`;
    tooltip.hidden = false;
  });
  page.cy.on("mouseout", "node", () => { tooltip.hidden = true; });
  page.cy.on("tap", "node[kind = 'pod']", event => showPod(event.target.data("pod").id));
  applyNamespace();
}

function applyNamespace() {
  const cy = page.cy, ns = page.namespace;
  if (!cy) return;
  cy.batch(() => {
    cy.elements().removeClass("hidden");
    if (!ns) return;
    cy.nodes("[kind = 'pod'], [kind = 'svc'], [kind = 'ns']").forEach(n => {
      if (n.data("namespace") !== ns) n.addClass("hidden");
    });
    cy.edges().forEach(e => { if (!(e.data("namespaces") || []).includes(ns)) e.addClass("hidden"); });
  });
}

function setModel(model) {
  page.model = model;
  $("cluster-name").textContent = model.cluster;
  const select = $("ns-filter"), keep = select.value;
  select.replaceChildren(el("option", "all namespaces"));
  select.firstChild.value = "";
  for (const ns of model.namespaces) {
    const o = el("option", ns);
    o.value = ns;
    select.appendChild(o);
  }
  select.value = model.namespaces.includes(keep) ? keep : "";
  const from = $("trace-from"), chosen = from.value;
  from.replaceChildren(...model.pods.filter(p => !p.dns).map(p => {
    const o = el("option", `${p.namespace}/${p.name}`);
    o.value = p.name;
    return o;
  }));
  if (chosen) from.value = chosen;
  buildMap(model);
}

// --- pod panel -------------------------------------------------------------------------------------

async function showPod(id) {
  const panel = $("pod-panel");
  const answer = await (await fetch(`/api/pod?id=${encodeURIComponent(id)}`)).json();
  panel.replaceChildren(el("h2", "pod"));
  if (!answer.ok) { panel.appendChild(el("p", answer.error, "error")); return; }
  const dl = el("dl");
  const row = (k, v) => { dl.appendChild(el("dt", k)); dl.appendChild(el("dd", v)); };
  row("pod", `${answer.namespace}/${answer.name}`);
  row("address", `${answer.ip} (${answer.mac})`);
  row("node", answer.node);
  row("labels", Object.entries(answer.labels).map(([k, v]) => `${k}=${v}`).join(", ") || "none");
  row("policies", answer.policies.length
    ? answer.policies.map(p => `${p.policy} (${p.directions.join(", ")})`).join("; ")
    : "none select it: not isolated");
  row("services", answer.services.map(s => `${s.service} ${s.clusterIP || ""} ${s.ports.join(" ")}`)
    .join("; ") || "none");
  panel.appendChild(dl);
  panel.dataset.pod = answer.id;
}

// --- trace -------------------------------------------------------------------------------------------

async function runTrace(event) {
  event.preventDefault();
  const out = $("trace-output");
  const from = $("trace-from").value, to = $("trace-to").value.trim();
  out.className = "";
  out.textContent = "tracing...";
  const answer = await (await fetch(`/api/trace?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`)).json();
  if (page.cy) page.cy.elements().removeClass("traced");
  if (!answer.ok) { out.className = "error"; out.textContent = answer.error; return; }
  out.textContent = answer.text;
  drawPath(answer.path);
}

function drawPath(path) {
  const cy = page.cy;
  if (!cy) return;
  cy.remove("edge.trace");
  for (let k = 0; k < path.length; k++) {
    const node = cy.getElementById(path[k]);
    node.addClass("traced");
    if (k > 0 && path[k - 1] !== path[k]) {
      cy.add({ group: "edges", classes: "trace traced",
               data: { id: `trace${k}`, source: path[k - 1], target: path[k], label: `${k}` } });
    }
  }
}

// --- counters per node ---------------------------------------------------------------------------

function updateStatus(list) {
  const now = Date.now() / 1000;
  for (const s of list) {
    const h = page.history[s.node] || (page.history[s.node] = []);
    const last = page.status[s.node];
    if (s.up && last && last.up && last.at) {
      const dt = Math.max(now - last.at, 0.001);
      h.push({ frames: Math.max(s.rx_frames - last.rx_frames, 0) / dt,
               drops: Math.max(s.dropped - last.dropped, 0) / dt });
      if (h.length > HISTORY) h.shift();
    }
    page.status[s.node] = { ...s, at: now };
  }
  drawCharts();
}

function drawCharts() {
  const list = $("chart-list");
  for (const [name, s] of Object.entries(page.status)) {
    let box = document.getElementById(`chart-${name}`);
    if (!box) {
      box = el("div", undefined, "chart");
      box.id = `chart-${name}`;
      box.append(el("span", "", "title"), document.createElement("canvas"), el("span", "", "drops"));
      list.appendChild(box);
    }
    const h = page.history[name] || [];
    const latest = h.length ? h[h.length - 1] : { frames: 0, drops: 0 };
    box.children[0].textContent = s.up
      ? `${name}: ${latest.frames.toFixed(0)} frames/s, ${latest.drops.toFixed(1)} drops/s, ` +
        `${s.connections} connections`
      : `${name}: not running`;
    const top = Object.entries(s.drops || {}).sort((a, b) => b[1] - a[1]).slice(0, 3);
    box.children[2].textContent = top.map(([k, v]) => `${k} ${v}`).join("  ");
    const canvas = box.children[1];
    const width = canvas.clientWidth || 300, height = canvas.clientHeight || 44;
    canvas.width = width;
    canvas.height = height;
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, width, height);
    const peak = Math.max(1, ...h.map(p => p.frames));
    for (const [field, color] of [["frames", "#1565c0"], ["drops", "#c62828"]]) {
      g.strokeStyle = color;
      g.beginPath();
      h.forEach((p, k) => {
        const x = (k / (HISTORY - 1)) * width, y = height - 2 - (p[field] / peak) * (height - 4);
        if (k === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
    }
  }
}

// --- the event stream ------------------------------------------------------------------------------

function connect() {
  const source = new EventSource("/events");
  const live = $("live");
  source.addEventListener("state", e => {
    const state = JSON.parse(e.data);
    page.flows = [];
    page.edges = new Map();
    setModel(state.model);
    updateStatus(state.status);
    addFlows(state.flows);
    live.textContent = "live";
    live.className = "live on";
  });
  source.addEventListener("model", e => setModel(JSON.parse(e.data)));
  source.addEventListener("status", e => updateStatus(JSON.parse(e.data)));
  source.addEventListener("flow", e => addFlows([JSON.parse(e.data)]));
  source.addEventListener("lost", e => {
    const lost = JSON.parse(e.data);
    page.lost += lost.page || lost.flows || 0;
    renderTable();
  });
  source.onerror = () => { live.textContent = "reconnecting"; live.className = "live off"; };
}

document.addEventListener("DOMContentLoaded", () => {
  $("flow-filter").addEventListener("input", filterChanged);
  $("ns-filter").addEventListener("change", e => {
    page.namespace = e.target.value;
    applyNamespace();
    renderTable();
  });
  $("trace-form").addEventListener("submit", runTrace);
  connect();
});
