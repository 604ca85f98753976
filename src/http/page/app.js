// The live page: machines as state graphs, instances with a search, and
// the event stream of /v1/watch. Plain DOM, no framework; every value from
// the server is put in with textContent, never as HTML.
"use strict";

const EVENTS_SHOWN_MAX = 200; // newest first; older ones are dropped
const INSTANCES_PAGE_SIZE = 20;
const RECONNECT_DELAY_MS = 2000;
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("corestate-token") || "";
let socket = null;
let page = 0;

function el(tag, attrs, text) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG_NS, tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function api(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const answer = await fetch(path, { headers });
  const body = await answer.json();
  if (!answer.ok) throw new Error((body.error && body.error.message) || answer.statusText);
  return body;
}

function setStatus(text) { $("status").textContent = text; }

// ---- machines ----------------------------------------------------------

// States on a circle, transitions as arrows (curved when two states have
// transitions both ways, a loop for a self-transition), labelled by event.
function drawGraph(definition) {
  const states = [...new Set(definition.states)];
  const radius = 28, size = Math.max(220, 90 * Math.sqrt(states.length) + 120);
  const center = size / 2, ring = states.length > 1 ? size / 2 - radius - 24 : 0;
  const at = new Map(states.map((s, i) => {
    const angle = (2 * Math.PI * i) / states.length - Math.PI / 2;
    return [s, { x: center + ring * Math.cos(angle), y: center + ring * Math.sin(angle) }];
  }));
  const svg = el("svg:svg", { width: size, height: size, viewBox: `0 0 ${size} ${size}` });
  const defs = el("svg:defs");
  const marker = el("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  marker.appendChild(el("svg:path", { d: "M0,0 L10,5 L0,10 z", fill: "#8891a5" }));
  defs.appendChild(marker);
  svg.appendChild(defs);
  // One edge per (from, to), with the events that take it.
  const edges = new Map();
  for (const t of definition.transitions) {
    for (const from of [].concat(t.from)) {
      const key = from + "\u0000" + t.to;
      if (!edges.has(key)) edges.set(key, { from, to: t.to, events: [] });
      edges.get(key).events.push(t.event);
    }
  }
  for (const e of edges.values()) {
    const a = at.get(e.from), b = at.get(e.to);
    if (!a || !b) continue;
    const g = el("svg:g", { class: "edge" });
    let d, lx, ly;
    if (e.from === e.to) {
      d = `M${a.x - 8},${a.y - radius} C${a.x - 30},${a.y - 70} ${a.x + 30},${a.y - 70} ${a.x + 8},${a.y - radius}`;
      lx = a.x; ly = a.y - 58;
    } else {
      const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy);
      const ux = dx / len, uy = dy / len;
      const bend = edges.has(e.to + "\u0000" + e.from) ? 18 : 0;
      const sx = a.x + ux * radius, sy = a.y + uy * radius;
      const tx = b.x - ux * radius, ty = b.y - uy * radius;
      const mx = (sx + tx) / 2 - uy * bend, my = (sy + ty) / 2 + ux * bend;
      d = `M${sx},${sy} Q${mx},${my} ${tx},${ty}`;
      lx = mx; ly = my - 4;
    }
    g.appendChild(el("svg:path", { d, "marker-end": "url(#arrow)" }));
    g.appendChild(el("svg:text", { x: lx, y: ly }, e.events.join(", ")));
    svg.appendChild(g);
  }
  for (const s of states) {
    const p = at.get(s);
    const g = el("svg:g", { class: s === definition.initial ? "state initial" : "state", "data-state": s });
    g.appendChild(el("svg:circle", { cx: p.x, cy: p.y, r: radius }));
    g.appendChild(el("svg:text", { x: p.x, y: p.y }, s));
    svg.appendChild(g);
  }
  return svg;
}

async function loadMachines() {
  const box = $("machines");
  const list = await api("/v1/machines");
  box.replaceChildren();
  for (const m of list.items) {
    const version = m.versions[m.versions.length - 1];
    const path = `/v1/machines/${encodeURIComponent(m.machine)}/versions/${version}`;
    const got = await api(path);
    const card = el("div", { class: "machine", "data-machine": m.machine });
    card.appendChild(el("h3", {}, `${m.machine} v${version}`));
    card.appendChild(drawGraph(got.definition));
    box.appendChild(card);
  }
  if (!list.items.length) box.textContent = "no machines yet";
}

// ---- instances ---------------------------------------------------------

async function loadInstances() {
  const query = new URLSearchParams({ limit: INSTANCES_PAGE_SIZE, offset: page * INSTANCES_PAGE_SIZE });
  const machine = $("search-machine").value.trim(), state = $("search-state").value.trim();
  if (machine) query.set("machine", machine);
  if (state) query.set("state", state);
  const got = await api("/v1/instances?" + query);
  const rows = $("instances");
  rows.replaceChildren();
  for (const i of got.instances) {
    const tr = el("tr", { "data-id": i.id });
    for (const v of [i.id, i.machine, i.version, i.state, i.last_wal_offset]) tr.appendChild(el("td", {}, String(v)));
    rows.appendChild(tr);
  }
  const first = got.total ? page * INSTANCES_PAGE_SIZE + 1 : 0;
  $("page-info").textContent = `${first}–${page * INSTANCES_PAGE_SIZE + got.instances.length} of ${got.total}`;
  $("prev").disabled = page === 0;
  $("next").disabled = !got.has_more;
}

// ---- live events -------------------------------------------------------

function showEvent(e) {
  const li = el("li", { "data-offset": e.wal_offset });
  li.appendChild(el("span", { class: "offset" }, "#" + e.wal_offset));
  li.appendChild(document.createTextNode(`${e.machine}/${e.instance_id} ${e.event}: ${e.from_state} `));
  li.appendChild(el("span", { class: "arrow" }, "→"));
  li.appendChild(document.createTextNode(" " + e.to_state));
  const list = $("events");
  list.prepend(li);
  // Keep a listed instance's row current.
  for (const row of $("instances").children) {
    if (row.dataset.id === e.instance_id) {
      row.children[3].textContent = e.to_state;
      row.children[4].textContent = String(e.wal_offset);
    }
  }
  while (list.children.length > EVENTS_SHOWN_MAX) list.lastElementChild.remove();
}

function connect() {
  if (socket) { socket.onclose = null; socket.close(); }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  // Live from now on, without the context (the list shows no context).
  socket = new WebSocket(`${scheme}//${location.host}/v1/watch?include_ctx=false`);
  setStatus("connecting…");
  socket.onopen = () => { if (token) socket.send(JSON.stringify({ token })); };
  socket.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type === "subscribed") setStatus(`live from offset ${msg.wal_offset}`);
    else if (msg.type === "event") showEvent(msg);
  };
  socket.onclose = (c) => {
    const why = `${c.code}${c.reason ? ": " + c.reason : ""}`;
    // 1008: the token was refused; wait for another one.
    if (c.code === 1008) return setStatus(`stream refused (${why}): enter a token`);
    setStatus(`stream closed (${why}); reconnecting…`);
    setTimeout(connect, RECONNECT_DELAY_MS);
  };
}

async function refresh() {
  try {
    await loadMachines();
    await loadInstances();
  } catch (e) {
    setStatus("error: " + e.message);
  }
}

$("auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("corestate-token", token);
  refresh();
  connect();
});
$("search").addEventListener("submit", (ev) => { ev.preventDefault(); page = 0; loadInstances().catch((e) => setStatus("error: " + e.message)); });
$("prev").addEventListener("click", () => { page = Math.max(0, page - 1); loadInstances(); });
$("next").addEventListener("click", () => { page += 1; loadInstances(); });
$("token").value = token;
refresh();
connect();
