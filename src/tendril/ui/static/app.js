// Tendril's Hubble UI front end: namespace picker, SVG service map, flow table and details pane.
// Hand-written, no framework and no build step. The page state lives in the URL query
// (?namespace=a&namespace=b&verdict=DROPPED&pod=x&protocol=tcp&port=8080), so a view can be shared.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const FILTERS = ["verdict", "pod", "protocol", "port"];
const NODE_W = 180;
const NODE_H = 54;
const LAYER_GAP = 270;
const ROW_GAP = 96;
const MARGIN = 30;

const state = {
  namespaces: [],              // selected namespaces
  filters: { verdict: "", pod: "", protocol: "", port: "" },
  live: true,
  source: null,                // EventSource of /api/stream
  selectedFlow: null,          // id of the flow in the details pane
  selectedNode: null,          // id of the map node in the details pane
  map: { nodes: [], edges: [] },
  generation: 0,               // bumps on every new query, so late answers of an old one are ignored
};

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

// --- URL <-> state --------------------------------------------------------------------------------

function readURL() {
  const p = new URLSearchParams(location.search);
  state.namespaces = p.getAll("namespace");
  for (const f of FILTERS) state.filters[f] = p.getAll(f).join(",");
}

function query(extra) {
  const p = new URLSearchParams();
  for (const ns of state.namespaces) p.append("namespace", ns);
  for (const f of FILTERS) if (state.filters[f]) p.append(f, state.filters[f]);
  for (const [k, v] of Object.entries(extra || {})) p.append(k, v);
  return p.toString();
}

function writeURL() {
  const q = query();
  history.replaceState(null, "", q ? `?${q}` : location.pathname);
}

// --- talking to the server -------------------------------------------------------------------------

async function getJSON(url) {
  const resp = await fetch(url, { cache: "no-store" });
  let body = null;
  try { body = await resp.json(); } catch (e) { body = { error: `${resp.status} ${resp.statusText}` }; }
  if (!resp.ok) throw new Error(body && body.error ? body.error : `${resp.status} ${resp.statusText}`);
  return body;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

async function refresh() {
  const generation = ++state.generation;
  stopStream();
  writeURL();
  const q = query();
  let flows, map;
  try {
    [flows, map] = await Promise.all([getJSON(`/api/flows?${q}`), getJSON(`/api/servicemap?${q}`)]);
  } catch (e) {
    if (generation !== state.generation) return;
    showError(e.message);
    document.body.dataset.state = "error";
    return;
  }
  if (generation !== state.generation) return;
  showError("");
  render(flows, map);
  document.body.dataset.state = "ready";
  if (state.live) startStream(q, generation);
}

function startStream(q, generation) {
  stopStream();
  const source = new EventSource(`/api/stream?${q}`);
  source.addEventListener("update", (ev) => {
    if (generation !== state.generation) return;
    const data = JSON.parse(ev.data);
    render(data, data.servicemap);
    document.body.dataset.version = data.version;
  });
  source.onerror = () => { $("#status").title = "live updates: reconnecting"; };
  state.source = source;
}

function stopStream() {
  if (state.source) state.source.close();
  state.source = null;
}

function render(flows, map) {
  renderTable(flows);
  renderMap(map);
}

// --- status and namespaces -------------------------------------------------------------------------

async function loadStatus() {
  const box = $("#status");
  try {
    const s = await getJSON("/api/status");
    const r = s.relay;
    const w = `${s.window.flows} flows in window`;
    if (!r) {
      box.className = "status ok";
      box.textContent = w;
    } else if (r.reachable) {
      const nodes = (r.nodes || []).map((n) => `${n.name} (${n.state.toLowerCase()})`).join(", ");
      box.className = "status ok";
      box.textContent = `Relay ${r.address}: ${r.connected_nodes} node(s) connected` +
        (r.unavailable_nodes.length ? `, ${r.unavailable_nodes.length} unavailable` : "") +
        ` · ${w}` + (nodes ? ` · ${nodes}` : "");
    } else {
      box.className = "status bad";
      box.textContent = `Relay ${r.address} unreachable: ${r.error} · ${w}`;
    }
  } catch (e) {
    box.className = "status bad";
    box.textContent = `UI server unreachable: ${e.message}`;
  }
}

async function loadNamespaces() {
  let list = [];
  try {
    list = (await getJSON("/api/namespaces")).namespaces;
  } catch (e) {
    return;
  }
  const names = new Set(list.map((n) => n.name));
  for (const ns of state.namespaces) if (!names.has(ns)) list.push({ name: ns, seen: false });
  const picker = $("#ns-picker");
  picker.replaceChildren();
  for (const ns of list.sort((a, b) => a.name.localeCompare(b.name))) {
    const box = el("input", { type: "checkbox", value: ns.name, name: "namespace" });
    box.checked = state.namespaces.includes(ns.name);
    box.addEventListener("change", () => {
      state.namespaces = [...picker.querySelectorAll("input:checked")].map((i) => i.value);
      refresh();
    });
    picker.append(el("label", { class: ns.seen ? "" : "unseen", dataset: { namespace: ns.name } }, box, ns.name));
  }
}

// --- flow table and details ------------------------------------------------------------------------

function endpointText(side) {
  const port = side.port ? `:${side.port}` : "";
  return `${side.label}${port}`;
}

function renderTable(data) {
  const body = $("#flows tbody");
  body.replaceChildren();
  for (const f of data.flows) {
    const tr = el("tr", { dataset: { id: f.id, verdict: f.verdict } },
      el("td", { class: "time", title: f.node_name }, f.time.slice(11, 23)),
      el("td", { class: "src", title: f.source.ip }, endpointText(f.source)),
      el("td", { class: "dst", title: f.destination.ip }, endpointText(f.destination)),
      el("td", { class: `verdict ${f.verdict}` }, f.verdict),
      el("td", { class: "type" }, f.type),
      el("td", { class: "summary" }, f.summary));
    if (f.id === state.selectedFlow) tr.classList.add("selected");
    tr.addEventListener("click", () => selectFlow(f.id));
    body.append(tr);
  }
  const shown = data.flows.length;
  $("#flow-count").textContent = `${shown} shown of ${data.matched} matching (window: ${data.window} flows)`;
}

function dl(pairs) {
  const list = el("dl");
  for (const [k, v] of pairs) {
    if (v === "" || v === null || v === undefined) continue;
    list.append(el("dt", {}, k), el("dd", {}, v));
  }
  return list;
}

async function selectFlow(id) {
  state.selectedFlow = id;
  state.selectedNode = null;
  for (const tr of document.querySelectorAll("#flows tbody tr")) {
    tr.classList.toggle("selected", Number(tr.dataset.id) === id);
  }
  for (const g of document.querySelectorAll("#map .node")) g.classList.remove("selected");
  const pane = $("#details");
  let d;
  try {
    d = await getJSON(`/api/flows/${id}`);
  } catch (e) {
    pane.replaceChildren(el("h2", {}, "Details"), el("p", { class: "error" }, e.message));
    return;
  }
  const r = d.row;
  pane.replaceChildren(
    el("h2", {}, "Flow"),
    dl([
      ["Time", r.time],
      ["Node", r.node_name],
      ["Verdict", r.verdict],
      ["Drop reason", r.drop_reason],
      ["Type", r.type],
      ["Direction", r.direction],
      ["Reply", r.is_reply === null ? "unknown" : String(r.is_reply)],
      ["Protocol", r.protocol],
      ["Source", `${endpointText(r.source)} (identity ${r.source.identity_name})`],
      ["Source IP", r.source.ip],
      ["Destination", `${endpointText(r.destination)} (identity ${r.destination.identity_name})`],
      ["Destination IP", r.destination.ip],
      ["Summary", r.summary],
    ]),
    el("h2", {}, "JSON"),
    el("pre", { class: "json" }, JSON.stringify(d.flow, null, 2)));
}

function showNode(node) {
  state.selectedNode = node.id;
  state.selectedFlow = null;
  for (const g of document.querySelectorAll("#map .node")) g.classList.toggle("selected", g.dataset.id === node.id);
  const edges = state.map.edges.filter((e) => e.source === node.id || e.target === node.id);
  const list = el("ul");
  for (const e of edges) {
    const other = e.source === node.id ? `→ ${e.target}` : `← ${e.source}`;
    list.append(el("li", {}, `${other} ${e.label}: ${e.state} (${e.flows.forwarded} forwarded, ` +
      `${e.flows.dropped} dropped flows; last ${e.last_seen.slice(11, 19)})`));
  }
  $("#details").replaceChildren(
    el("h2", {}, node.kind === "workload" ? "Workload" : "Node"),
    dl([["Name", node.name], ["Namespace", node.namespace], ["Kind", node.kind],
      ["Pods", node.pods.join(", ")], ["Flows", node.flows]]),
    el("h2", {}, "Connections"), list);
}

// --- service map -------------------------------------------------------------------------------------

// Layers: longest path from the nodes nothing points at, cycles broken at their back edges.
function layout(nodes, edges) {
  const ids = nodes.map((n) => n.id);
  const out = new Map(ids.map((id) => [id, []]));
  const indeg = new Map(ids.map((id) => [id, 0]));
  for (const e of edges) {
    if (e.source === e.target) continue;
    out.get(e.source).push(e.target);
    indeg.set(e.target, indeg.get(e.target) + 1);
  }
  const state_ = new Map();   // 1: on the DFS stack, 2: done
  const dag = new Map(ids.map((id) => [id, []]));
  const visit = (id) => {
    state_.set(id, 1);
    for (const t of out.get(id)) {
      if (state_.get(t) === 1) continue;                 // back edge: ignored for layering
      dag.get(id).push(t);
      if (!state_.has(t)) visit(t);
    }
    state_.set(id, 2);
  };
  const roots = ids.filter((id) => indeg.get(id) === 0);
  for (const id of [...roots, ...ids]) if (!state_.has(id)) visit(id);
  const rank = new Map(ids.map((id) => [id, 0]));
  for (let changed = true, guard = 0; changed && guard <= ids.length; guard++) {
    changed = false;
    for (const [s, ts] of dag) {
      for (const t of ts) {
        if (rank.get(t) < rank.get(s) + 1) { rank.set(t, rank.get(s) + 1); changed = true; }
      }
    }
  }
  const layers = [];
  for (const n of nodes) (layers[rank.get(n.id)] ||= []).push(n);
  const compact = layers.filter(Boolean);
  // order each layer by the mean position of its neighbours in the previous layer (two sweeps)
  const pos = new Map();
  compact.forEach((layer) => layer.forEach((n, i) => pos.set(n.id, i)));
  const preds = new Map(ids.map((id) => [id, []]));
  for (const e of edges) if (e.source !== e.target) preds.get(e.target).push(e.source);
  for (let sweep = 0; sweep < 2; sweep++) {
    for (let l = 1; l < compact.length; l++) {
      const bary = (n) => {
        const ps = preds.get(n.id).filter((p) => rank.get(p) < rank.get(n.id));
        return ps.length ? ps.reduce((a, p) => a + pos.get(p), 0) / ps.length : pos.get(n.id);
      };
      compact[l].sort((a, b) => bary(a) - bary(b) || a.id.localeCompare(b.id));
      compact[l].forEach((n, i) => pos.set(n.id, i));
    }
  }
  const tallest = Math.max(...compact.map((l) => l.length));
  const xy = new Map();
  compact.forEach((layer, l) => {
    const offset = ((tallest - layer.length) * ROW_GAP) / 2;
    layer.forEach((n, i) => xy.set(n.id, { x: MARGIN + l * LAYER_GAP, y: MARGIN + 14 + offset + i * ROW_GAP, layer: l }));
  });
  return { xy, width: MARGIN * 2 + (compact.length - 1) * LAYER_GAP + NODE_W, height: MARGIN * 2 + 28 + (tallest - 1) * ROW_GAP + NODE_H };
}

// The nearest place at (x, y), (x, y ± 13), (x, y ± 26)... where a w×h label box overlaps none placed.
function freeSpot(placed, x, y, w, h) {
  const hits = (cx, cy) => placed.some((b) => Math.abs(b.x - cx) * 2 < b.w + w && Math.abs(b.y - cy) * 2 < b.h + h);
  for (let i = 0; i < 24; i++) {
    const cy = y + (i % 2 ? 1 : -1) * Math.ceil(i / 2) * h;
    if (!hits(x, cy)) {
      placed.push({ x, y: cy, w, h });
      return [x, cy];
    }
  }
  placed.push({ x, y, w, h });
  return [x, y];
}

function hue(text) {
  let h = 0;
  for (const c of text) h = (h * 31 + c.charCodeAt(0)) % 360;
  return h;
}

function renderMap(map) {
  state.map = map;
  const box = $("#map");
  if (!map.nodes.length) {
    box.replaceChildren(el("p", { class: "empty" }, "No flows match."));
    return;
  }
  const { xy, width, height } = layout(map.nodes, map.edges);
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "service map" });
  const defs = svg("defs");
  for (const [name, colour] of [["forwarded", "#2e9e44"], ["dropped", "#d6263a"], ["mixed", "#e0a100"]]) {
    defs.append(svg("marker", { id: `arrow-${name}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", fill: colour })));
  }
  root.append(defs);

  // edges between the same two nodes fan out, so every protocol/port keeps its own line and label
  const pairIndex = new Map();
  const pairCount = new Map();
  for (const e of map.edges) {
    const k = `${e.source}|${e.target}`;
    pairIndex.set(e.id, pairCount.get(k) || 0);
    pairCount.set(k, (pairCount.get(k) || 0) + 1);
  }
  const edgeLayer = svg("g", { class: "edges" });
  const placed = [];   // label boxes already drawn, so labels of converging edges do not overlap
  for (const e of map.edges) {
    const a = xy.get(e.source), b = xy.get(e.target);
    const k = `${e.source}|${e.target}`;
    const i = pairIndex.get(e.id), n = pairCount.get(k);
    const spread = (i - (n - 1) / 2) * 22;
    let d, lx, ly;
    if (e.source === e.target) {
      const x = a.x + NODE_W / 2 + spread * 2, y = a.y;
      d = `M${x - 20},${y} C${x - 40},${y - 60} ${x + 40},${y - 60} ${x + 20},${y}`;
      lx = x; ly = y - 50;
    } else if (b.layer > a.layer) {
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2 + spread, x2 = b.x, y2 = b.y + NODE_H / 2 + spread;
      const c = (x2 - x1) / 2;
      d = `M${x1},${y1} C${x1 + c},${y1} ${x2 - c},${y2} ${x2},${y2}`;
      lx = (x1 + x2) / 2; ly = (y1 + y2) / 2 - 5;
    } else {
      // same layer or backwards: bow below both boxes
      const x1 = a.x + NODE_W / 2 + spread, y1 = a.y + NODE_H, x2 = b.x + NODE_W / 2 + spread, y2 = b.y + NODE_H;
      const dip = Math.max(y1, y2) + 46 + Math.abs(spread);
      d = `M${x1},${y1} C${x1},${dip} ${x2},${dip} ${x2},${y2}`;
      lx = (x1 + x2) / 2; ly = dip - 8;
    }
    const tip = `${e.source} → ${e.target} ${e.label}: ${e.state}; flows ${e.flows.forwarded} forwarded, ` +
      `${e.flows.dropped} dropped; connections ${e.connections.forwarded} forwarded, ` +
      `${e.connections.dropped} dropped; last seen ${e.last_seen}`;
    [lx, ly] = freeSpot(placed, lx, ly, e.label.length * 6.8 + 6, 13);
    edgeLayer.append(svg("g", { class: `edge ${e.state}`, "data-id": e.id, "data-source": e.source, "data-target": e.target, "data-state": e.state, "data-label": e.label },
      svg("title", {}, tip),
      svg("path", { d, "marker-end": `url(#arrow-${e.state})` }),
      svg("text", { x: lx, y: ly, "text-anchor": "middle" }, e.label)));
  }
  const nodeLayer = svg("g", { class: "nodes" });
  for (const node of map.nodes) {
    const p = xy.get(node.id);
    const sub = node.kind === "workload" ? `ns ${node.namespace}` + (node.pods.length > 1 ? ` · ${node.pods.length} pods` : "") : node.kind === "world" ? "outside the cluster" : "reserved identity";
    const colour = node.kind === "workload" ? `hsl(${hue(node.namespace)},60%,52%)` : "#8792a2";
    const g = svg("g", { class: `node kind-${node.kind}`, transform: `translate(${p.x},${p.y})`, "data-id": node.id, "data-name": node.name, "data-namespace": node.namespace },
      svg("title", {}, node.pods.length ? `${node.id}: ${node.pods.join(", ")}` : node.id),
      svg("rect", { width: NODE_W, height: NODE_H, rx: 8 }),
      svg("rect", { class: "stripe", width: 6, height: NODE_H - 2, x: 1, y: 1, rx: 3, fill: colour }),
      svg("text", { class: "name", x: 16, y: 23 }, node.name),
      svg("text", { class: "sub", x: 16, y: 41 }, sub));
    if (node.id === state.selectedNode) g.classList.add("selected");
    g.addEventListener("click", () => showNode(node));
    nodeLayer.append(g);
  }
  root.append(edgeLayer, nodeLayer);
  box.replaceChildren(root);
}

// --- wiring ------------------------------------------------------------------------------------------

function fillForm() {
  for (const f of FILTERS) {
    const input = $(`#f-${f}`);
    if (f === "verdict" && state.filters[f] && ![...input.options].some((o) => o.value === state.filters[f])) {
      input.append(el("option", { value: state.filters[f] }, state.filters[f]));   // keep what the URL says
    }
    input.value = state.filters[f];
  }
}

function readForm() {
  for (const f of FILTERS) state.filters[f] = $(`#f-${f}`).value.trim();
}

function start() {
  readURL();
  fillForm();
  $("#filters").addEventListener("submit", (ev) => { ev.preventDefault(); readForm(); refresh(); });
  $("#f-verdict").addEventListener("change", () => { readForm(); refresh(); });
  $("#f-clear").addEventListener("click", () => {
    for (const f of FILTERS) state.filters[f] = "";
    fillForm();
    refresh();
  });
  $("#ns-clear").addEventListener("click", () => {
    state.namespaces = [];
    for (const box of document.querySelectorAll("#ns-picker input")) box.checked = false;
    refresh();
  });
  $("#live").addEventListener("change", (ev) => {
    state.live = ev.target.checked;
    if (state.live) refresh(); else stopStream();
  });
  loadNamespaces();
  loadStatus();
  refresh();
  setInterval(loadStatus, 5000);
  setInterval(loadNamespaces, 10000);
}

document.addEventListener("DOMContentLoaded", start);
