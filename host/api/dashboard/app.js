// servomesh dashboard: a client of the HTTP API and the telemetry WebSocket (docs/api.md).
// No dependencies and no other origins: everything comes from the server that served the page.

import { drawPlot, lineColor, prune } from "./plot.js";

const THROTTLE_MS = 100; // at most one PUT per joint this often while a slider moves
const MOVE_MS = 300; // each slider step is a move over this long: smooth at the throttle rate
const PLOT_FRAME_MS = 40; // redraw at most 25 times a second: the machine may be a small one
const LOG_ROWS = 50;
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 10000;
const HOLD_AFTER_INPUT_MS = 1000; // telemetry does not move a slider the user just moved
const TOKEN_KEY = "servomesh.token";

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  stopped: false,
  playing: null,
  joints: new Map(), // name -> {model, row, slider, target, actual, marker, color, history, sender}
  logKeys: new Set(), // operations shown, so that one from the stream and the log shows once
};

// -- small helpers -----------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

const deg = (value) => (value == null ? "–" : value.toFixed(1) + "°");

let toastTimer = 0;
function toast(text, error = false) {
  const box = $("toast");
  box.textContent = text;
  box.classList.toggle("error", error);
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (box.hidden = true), error ? 8000 : 3000);
}

const report = (what) => (err) => toast(`${what}: ${err.code}: ${err.message}`, true);

// -- REST --------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = {};
  if (state.token) headers.Authorization = "Bearer " + state.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let reply;
  try {
    reply = await fetch(path, { method, headers, body: body && JSON.stringify(body) });
  } catch {
    throw new ApiError(0, "unreachable", "no answer from the server");
  }
  const data = reply.status === 204 ? null : await reply.json().catch(() => null);
  if (reply.ok) return data;
  if (reply.status === 401) askToken();
  throw new ApiError(reply.status, data?.error ?? "http_" + reply.status, data?.detail ?? reply.statusText);
}

function askToken() {
  if (state.token) {
    sessionStorage.removeItem(TOKEN_KEY); // refused: do not offer it again
    state.token = null;
    toast("The server refused the token.", true);
  }
  $("token-form").hidden = false;
  $("token").focus();
  // Retrying the socket without a token is pointless: the form's submit reconnects.
  clearTimeout(retryTimer);
  setLink("offline", "needs a token");
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $("token").value = "";
  $("token-form").hidden = true;
  load();
  connect();
});

// -- stop, clear and the fleet's status ---------------------------------------------------------

function setStatus(stopped, playing) {
  state.stopped = stopped;
  state.playing = playing;
  applyStatus();
}

function applyStatus() {
  const { stopped, playing } = state;
  document.body.classList.toggle("stopped", stopped);
  $("stopped-banner").hidden = !stopped;
  $("state").dataset.state = stopped ? "stopped" : "running";
  $("state").textContent = stopped ? "STOPPED" : playing ? "playing " + playing : "running";
  $("clear").disabled = !stopped;
  for (const joint of state.joints.values()) joint.slider.disabled = stopped;
  for (const button of document.querySelectorAll("#poses button, #sequences button")) {
    button.disabled = stopped;
    button.classList.toggle("playing", button.dataset.name === playing);
  }
}

async function stop() {
  try {
    await api("POST", "/api/stop");
    setStatus(true, null); // latched on the server now; the status message confirms it
  } catch (err) {
    report("STOP FAILED")(err);
  }
}

$("stop").addEventListener("click", stop);
$("clear").addEventListener("click", () =>
  api("POST", "/api/stop/clear")
    .then(() => setStatus(false, state.playing))
    .catch(report("clear")),
);

// Escape stops from anywhere; "s" too, unless the user is typing (the token field).
document.addEventListener("keydown", (event) => {
  const typing = event.target.matches?.("input[type=text], input[type=password], textarea");
  const plainS = (event.key ?? "").toLowerCase() === "s" && !event.ctrlKey && !event.metaKey && !event.altKey;
  if (event.key === "Escape" || (plainS && !typing)) {
    event.preventDefault();
    if (!event.repeat) stop();
  }
});

// -- joints ------------------------------------------------------------------------------------

// One PUT in flight per joint, the newest value next: a drag never queues stale targets, and
// the final value is always sent, after the one before it has been answered. `forget` lets the
// same value be sent again (the slider was moved back by telemetry since).
function makeSender(name) {
  let wanted = null;
  let sent = null;
  let busy = false;
  let lastMs = -Infinity;
  let timer = 0;
  async function pump() {
    if (busy || wanted === null) return;
    const waitMs = lastMs + THROTTLE_MS - performance.now();
    if (waitMs > 0) {
      clearTimeout(timer);
      timer = setTimeout(pump, waitMs);
      return;
    }
    const value = wanted;
    wanted = null;
    if (value === sent) return; // a drag's `change` repeats its last `input`
    busy = true;
    lastMs = performance.now();
    sent = value;
    try {
      await api("PUT", "/api/joints/" + encodeURIComponent(name), { deg: value, ms: MOVE_MS });
    } catch (err) {
      report(name)(err);
    } finally {
      busy = false;
      pump();
    }
  }
  return {
    send(value) {
      wanted = value;
      pump();
    },
    forget() {
      sent = null;
    },
  };
}

function buildJoint(model, index) {
  const id = "joint-" + index;
  const slider = el("input", {
    id, type: "range", min: model.min_deg, max: model.max_deg, step: 0.5,
    value: model.target_deg ?? model.position_deg ?? model.home_deg ?? 0,
  });
  slider.dataset.joint = model.name;
  const target = el("output", { htmlFor: id, title: "the node's target" });
  const actual = el("output", { className: "actual", title: "the position the node reports" });
  const marker = el("span", { className: "marker", title: "actual position" });
  const row = el("div", { className: "joint" },
    el("div", { className: "joint-head" }, el("label", { htmlFor: id, textContent: model.name }), target, actual),
    slider,
    el("div", { className: "track", ariaHidden: "true" }, marker),
    el("div", { className: "limits" }, el("span", {}, deg(model.min_deg)), el("span", {}, deg(model.max_deg))),
  );
  const joint = {
    model, row, slider, target, actual, marker, history: [], heldUntil: 0,
    color: lineColor(index),
    sender: makeSender(model.name),
  };
  const moved = () => {
    joint.heldUntil = performance.now() + HOLD_AFTER_INPUT_MS;
    joint.sender.send(Number(slider.value));
  };
  slider.addEventListener("input", moved);
  slider.addEventListener("change", moved);
  return joint;
}

function renderJoints(models) {
  const names = models.map((m) => m.name).join("\n");
  if (names !== [...state.joints.keys()].join("\n")) {
    state.joints = new Map(models.map((m, i) => [m.name, buildJoint(m, i)]));
    const joints = [...state.joints.values()];
    $("joints").replaceChildren(...joints.map((j) => j.row));
    $("legend").replaceChildren(
      ...joints.map((j) => el("li", {}, el("i", { style: "background:" + j.color }), j.model.name)),
    );
    if (!models.length) $("joints").append(el("p", { className: "empty", textContent: "No joints." }));
    applyStatus();
  }
  for (const model of models) updateJoint(model.name, model);
}

function updateJoint(name, fields, nowMs) {
  const joint = state.joints.get(name);
  if (!joint) return;
  const model = Object.assign(joint.model, fields);
  joint.target.textContent = "target " + deg(model.target_deg);
  joint.actual.textContent = model.released ? "released" : "actual " + deg(model.position_deg);
  joint.row.classList.toggle("released", Boolean(model.released));
  joint.marker.hidden = model.position_deg == null;
  if (model.position_deg != null) {
    const span = model.max_deg - model.min_deg;
    joint.marker.style.left = ((100 * (model.position_deg - model.min_deg)) / span).toFixed(2) + "%";
    if (nowMs !== undefined) {
      joint.history.push([nowMs, model.position_deg]);
      prune(joint.history, nowMs); // here too: a hidden tab draws nothing, yet telemetry flows
    }
  }
  if (model.target_deg != null && performance.now() > joint.heldUntil) {
    joint.slider.value = model.target_deg;
    joint.sender.forget();
  }
}

// -- nodes, poses, sequences, log --------------------------------------------------------------

function renderNodes(nodes) {
  $("nodes").replaceChildren(
    ...nodes.map((node) =>
      el("tr", {},
        el("td", { textContent: node.name }),
        el("td", {}, el("span", { className: "state state-" + node.state, textContent: node.state, title: node.why ?? "" })),
        el("td", { className: "num", textContent: node.rtt_ms == null ? "–" : node.rtt_ms.toFixed(1) }),
        el("td", { className: "mono", textContent: node.link }),
      ),
    ),
  );
}

function renderPoses(poses) {
  const buttons = Object.entries(poses).map(([name, pose]) => {
    const angles = Object.entries(pose.joints).map(([joint, v]) => `${joint} ${v}°`);
    const button = el("button", { type: "button", textContent: name, title: angles.join(", ") });
    button.dataset.name = name;
    button.addEventListener("click", () =>
      api("POST", `/api/poses/${encodeURIComponent(name)}/go`)
        .then(() => toast("Going to pose " + name))
        .catch(report("pose " + name)),
    );
    return button;
  });
  $("poses").replaceChildren(...buttons);
  applyStatus();
}

function renderSequences(sequences) {
  const buttons = sequences.map((sequence) => {
    const length = sequence.loop ? "loop" : (sequence.duration_ms / 1000).toFixed(1) + " s";
    const button = el("button", { type: "button", textContent: `${sequence.name} (${length})` });
    button.dataset.name = sequence.name;
    button.addEventListener("click", () =>
      api("POST", `/api/sequences/${encodeURIComponent(sequence.name)}/play`)
        .then(() => toast("Playing " + sequence.name))
        .catch(report("sequence " + sequence.name)),
    );
    return button;
  });
  $("sequences").replaceChildren(...buttons);
  applyStatus();
}

$("sequence-stop").addEventListener("click", () =>
  api("POST", "/api/sequences/stop")
    .then((reply) => toast(reply.stopped ? "Sequence stopped" : "No sequence was playing"))
    .catch(report("stop sequence")),
);

function formatJoints(joints) {
  if (joints == null) return "";
  if (Array.isArray(joints)) return joints.join(", ");
  return Object.entries(joints)
    .map(([name, v]) => (typeof v === "number" ? `${name}=${Math.round(v * 10) / 10}` : `${name}=${v}`))
    .join(", ");
}

function logRow(op) {
  const time = new Date(op.time_s * 1000).toLocaleTimeString([], { hour12: false });
  const ok = op.result === "ok";
  return el("tr", {},
    el("td", { className: "time", textContent: time }),
    el("td", { textContent: op.source ?? "" }),
    el("td", { textContent: op.action }),
    el("td", { textContent: formatJoints(op.joints) }),
    el("td", { className: ok ? "result-ok" : "result-bad", textContent: op.result ?? "", title: op.detail ?? "" }),
    el("td", { className: "mono", textContent: op.trace_id ?? "" }),
    el("td", { className: "num", textContent: op.latency_ms == null ? "" : Math.round(op.latency_ms) }),
  );
}

// Not the id: a streamed operation has none yet (it is not stored when it is sent).
const opKey = (op) => `${op.trace_id}/${op.action}/${op.time_s}`;

function addOperation(op) {
  const key = opKey(op);
  if (state.logKeys.has(key)) return;
  state.logKeys.add(key);
  const row = logRow(op);
  row.dataset.key = key;
  const body = $("log");
  body.prepend(row);
  while (body.rows.length > LOG_ROWS) {
    state.logKeys.delete(body.lastElementChild.dataset.key);
    body.lastElementChild.remove();
  }
}

async function loadLog() {
  const { entries } = await api("GET", "/api/log?limit=" + LOG_ROWS);
  state.logKeys.clear();
  $("log").replaceChildren();
  for (const op of entries.sort((a, b) => a.time_s - b.time_s)) addOperation(op);
}

// -- loading and the telemetry stream ----------------------------------------------------------

async function load() {
  try {
    const [status, joints, nodes, poses, sequences] = await Promise.all(
      ["/api/status", "/api/joints", "/api/nodes", "/api/poses", "/api/sequences"].map((p) => api("GET", p)),
    );
    renderJoints(joints);
    renderNodes(nodes);
    renderPoses(poses);
    renderSequences(sequences);
    setStatus(status.stopped, status.playing);
    await loadLog();
  } catch (err) {
    if (err.status !== 401) report("loading")(err); // a 401 has shown the token form
  }
}

function setLink(linkState, text, why = "") {
  $("link").dataset.state = linkState;
  $("link").textContent = text;
  $("link").title = why;
}

let socket = null;
let tries = 0;
let retryTimer = 0;

function connect() {
  clearTimeout(retryTimer);
  if (socket) {
    socket.onclose = null;
    socket.close();
  }
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  // Browsers cannot set headers on a WebSocket: the token travels as a subprotocol.
  const protocols = state.token ? ["servomesh", "bearer." + state.token] : ["servomesh"];
  const ws = new WebSocket(scheme + location.host + "/api/telemetry", protocols);
  socket = ws;
  setLink("connecting", "connecting");
  ws.onopen = () => {
    tries = 0;
    setLink("live", "live");
  };
  ws.onmessage = (event) => handle(JSON.parse(event.data));
  ws.onclose = (event) => {
    const delayMs = Math.min(BACKOFF_BASE_MS * 2 ** tries, BACKOFF_CAP_MS);
    tries += 1;
    setLink("offline", `offline, retry in ${Math.ceil(delayMs / 1000)} s`, event.reason);
    retryTimer = setTimeout(connect, delayMs);
    // A refused socket says nothing about why: ask the REST API, which answers 401 if it is the token.
    if (event.code === 1008 || !event.wasClean) api("GET", "/api/status").catch(() => {});
  };
}

function handle(message) {
  const nowMs = performance.now(); // the plot runs on this clock: the host's may differ
  switch (message.type) {
    case "hello":
      renderJoints(message.joints);
      renderNodes(message.nodes);
      setStatus(message.stopped, message.playing ?? null);
      loadLog().catch(() => {}); // what happened while disconnected
      break;
    case "joints":
      for (const [name, fields] of Object.entries(message.joints)) updateJoint(name, fields, nowMs);
      break;
    case "nodes":
      renderNodes(message.nodes);
      break;
    case "status":
      setStatus(message.stopped, message.playing);
      break;
    case "operation":
      addOperation(message.operation);
      break;
  }
}

let lastFrameMs = 0;
function frame(nowMs) {
  requestAnimationFrame(frame);
  if (nowMs - lastFrameMs < PLOT_FRAME_MS) return;
  lastFrameMs = nowMs;
  drawPlot($("plot"), [...state.joints.values()], nowMs);
}

load();
connect();
requestAnimationFrame(frame);
