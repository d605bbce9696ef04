// The clinician's console page: draws the view the console pushes over the WebSocket ten times a
// second (console/hub.py), and sends the clinician's requests (console/server.py). No build step.
"use strict";

// The token comes in the URL's fragment (never sent to a server), is kept in this tab's
// sessionStorage and leaves the address bar at once; it goes in a header of every request and in
// the WebSocket's first message, never into the page.
const TOKEN = (() => {
  const m = /^#token=([A-Za-z0-9_-]+)$/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("metaemg-console-token", m[1]);
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem("metaemg-console-token");
})();
const INTENTS = ["relax", "open", "close"];
let INSTRUCTIONS = {};
const EMG_SECONDS = 10;
const $ = (id) => document.getElementById(id);

let view = null;
let emg = [];            // [index, sample[]] of the last EMG_SECONDS
let socketOpen = false;

// ---------------------------------------------------------------------------------------- requests
async function post(path, body) {
  const r = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Console-Token": TOKEN },
    body: JSON.stringify(body || {}),
    credentials: "omit",
  });
  let answer = {};
  try { answer = await r.json(); } catch (e) { answer = { ok: false, error: `HTTP ${r.status}` }; }
  return answer;
}

async function get(path) {
  const r = await fetch(path, { headers: { "X-Console-Token": TOKEN }, credentials: "omit" });
  if (!r.ok) throw new Error(`HTTP ${r.status}`);
  return r.json();
}

function confirmThen(text, action) {
  const d = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-yes").onclick = () => { d.close(); action(); };
  $("confirm-no").onclick = () => d.close();
  d.showModal();
}

async function control(cmd) {
  const a = await post("/api/control", { cmd });
  $("control-answer").textContent = a.ok ? `${cmd}: done` : `${cmd}: ${a.error}`;
}

const MOVES = "The hand may move as soon as you confirm.";
const ACTIONS = {
  pause: () => control("pause"),
  resume: () => confirmThen(`Resume: the controller drives the hand again. ${MOVES}`, () => control("resume")),
  clear: () => confirmThen(`Clear the fault: check the hand first. ${MOVES}`, () => control("clear")),
  stop: () => confirmThen("Stop the controller service? The hand holds still; the service must be started again to go on.", () => control("stop")),
  calibrate: () => startCalibration(),
  session: () => $("patient").focus(),
};
$("btn-pause").onclick = ACTIONS.pause;
$("btn-resume").onclick = ACTIONS.resume;
$("btn-clear").onclick = ACTIONS.clear;
$("btn-stop").onclick = ACTIONS.stop;

async function startCalibration() {
  const patient = $("patient").value.trim();
  const body = patient ? { patient } : {};
  if ($("rehearsal").checked) body.rehearsal = true;
  const a = await post("/api/calibrate", body);
  $("cal-status").textContent = a.ok ? "starting the calibration ..." : a.error;
}
$("btn-session").onclick = async () => {
  const a = await post("/api/session", { patient: $("patient").value.trim() });
  $("session-line").textContent = a.ok ? "opening the session ..." : a.error;
};
$("btn-end-session").onclick = () => confirmThen("End this patient's session? The hand is held until the next session.",
  async () => {
    const a = await post("/api/session", { end: true });
    if (!a.ok) $("session-line").textContent = a.error;
  });

// one format for every time on the page: local time, with the date where it is not today
function when(t) {
  const d = (typeof t === "number") ? new Date(t * 1000) : (typeof t === "string" ? new Date(t) : null);
  if (!d || Number.isNaN(d.getTime())) return "-";
  const hm = `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return hm;
  return `${d.getDate()} ${d.toLocaleString("en-GB", { month: "short" })} ${d.getFullYear()} ${hm}`;
}

// a model for a person: whose, when calibrated, how good (never only a hash)
function modelWords(m) {
  if (!m) return "none";
  if (!m.calibrated) return `the uncalibrated base model (${m.model_id}): it moves nothing`;
  const acc = (typeof m.accuracy_after === "number") ? `, accuracy ${Math.round(100 * m.accuracy_after)} %` : "";
  return `${m.patient ? m.patient + "'s" : "a"} model calibrated ${when(m.time)}${acc} (${m.model_id})`;
}
$("btn-calibrate").onclick = startCalibration;
$("btn-cancel-cal").onclick = () => post("/api/calibrate/cancel");
let shownRefused = null;  // the clip digest of the refused calibration the page shows
$("btn-install-anyway").onclick = () => {
  const clip = shownRefused;
  confirmThen("The gate refused this model. Install it anyway? It will drive the hand.", async () => {
    const a = await post("/api/install", { confirm: true, clip_sha256: clip });
    if (!a.ok) $("cal-status").textContent = a.error;
  });
};
$("btn-rollback").onclick = async () => {
  const models = await get("/api/models");
  const warning = models.rollback_warning;
  const prev = models.previous;
  if (!prev) { $("cal-status").textContent = "Nothing to roll back to: no calibration installed yet."; return; }
  const text = warning ? `WARNING: ${warning} Roll back anyway?`
    : `Roll back to model ${prev.model_id} (patient ${prev.patient || "-"}, ${prev.time || "?"})? ${MOVES}`;
  // the request names what this dialog showed: the server refuses it if that changed meanwhile
  const request = { confirm: true, from_model: models.current ? models.current.model_id : null, to_model: prev.model_id };
  if (models.rollback_patients) request.across_patients = models.rollback_patients;
  else if (warning) request.to_uncalibrated = true;
  confirmThen(text, async () => {
    const a = await post("/api/rollback", request);
    if (!a.ok) $("cal-status").textContent = a.error;
  });
};
$("btn-report").onclick = async () => {
  const tab = window.open("about:blank", "_blank");  // opened at the click: no popup blocker
  const a = await post("/api/report", {});
  if (a.ok && tab) tab.location = a.url; else if (tab) tab.close();
};

// ---------------------------------------------------------------------------------------- drawing
function fmt(x, digits = 2) { return (typeof x === "number") ? x.toFixed(digits) : "-"; }

function drawBanner(v) {
  const e = v.explain;
  $("banner").className = `sev-${e.severity}`;
  $("state-headline").textContent = e.headline;
  const meaning = (e.state === "unknown" && v.monitor_problem) ? v.monitor_problem : e.meaning;
  $("state-meaning").textContent = meaning[0].toUpperCase() + meaning.slice(1) + ".";
  $("state-next").textContent = "Next: " + e.next_step + ".";
  const b = $("state-action");
  const keep = e.action === "resume" && v.session && v.session.patient && !v.session.kept;
  const labels = { pause: "Pause", resume: keep ? "Keep this model" : "Resume", clear: "Clear", calibrate: "Calibrate now",
    session: "Open session" };
  b.hidden = !e.action || !socketOpen || (e.action === "calibrate" && Boolean(v.job_running));
  if (e.action) { b.textContent = labels[e.action]; b.onclick = ACTIONS[e.action]; }
  $("btn-pause").disabled = e.state !== "running";
  $("btn-resume").disabled = e.state !== "paused";
  $("btn-clear").disabled = e.state !== "fault";
  $("btn-stop").disabled = e.state === "unknown" || e.state === "stopping";
}

function drawHand(v) {
  // position: permille of travel, 0 fully open (extended) .. 1000 fully closed
  const pos = v.orthosis.position;
  const known = typeof pos === "number";
  const c = known ? Math.max(0, Math.min(1, pos / 1000)) : 0.5;  // unknown: drawn half way, greyed
  $("hand").classList.toggle("unknown", !known);
  const g = $("fingers");
  g.replaceChildren();
  const xs = [62, 90, 118, 146];
  const lengths = [70, 82, 78, 62];
  xs.forEach((x, i) => {
    const L = lengths[i];
    // an open finger points up; a closed one curls down over the palm
    const a1 = -Math.PI / 2 + c * 1.6, a2 = a1 + c * 1.6;
    const x1 = x + Math.cos(a1) * L * 0.55, y1 = 125 + Math.sin(a1) * L * 0.55;
    const x2 = x1 + Math.cos(a2) * L * 0.45, y2 = y1 + Math.sin(a2) * L * 0.45;
    const p = document.createElementNS("http://www.w3.org/2000/svg", "path");
    p.setAttribute("d", `M${x},125 L${x1.toFixed(1)},${y1.toFixed(1)} L${x2.toFixed(1)},${y2.toFixed(1)}`);
    p.setAttribute("class", "finger");
    g.appendChild(p);
  });
  const ta = -Math.PI * 0.85 + c * 1.2;
  $("thumb").setAttribute("d", `M50,170 L${(50 + Math.cos(ta) * 45).toFixed(1)},${(170 + Math.sin(ta) * 45).toFixed(1)}`);
  $("hand").dataset.closed = c.toFixed(3);
  const o = v.orthosis;
  $("orthosis-state").textContent = o.connected ? `orthosis: ${o.device_state || "?"}` : "orthosis: not connected";
  $("position-text").textContent = (typeof pos === "number")
    ? `${Math.round(100 - c * 100)} % open` : "position unknown";
}

function drawDecision(v) {
  const d = v.decision;
  const box = $("decision");
  const live = Boolean(d && d.live);
  box.className = live ? "live" : "stale";
  if (!d) {
    $("decision-intent").textContent = "-";
    $("decision-note").textContent = "no decision yet";
  } else {
    $("decision-intent").textContent = d.intent || (d.rejected ? "unsure" : "-");
    $("decision-note").textContent = live ? (d.rejected ? "below the threshold: holds relax" : "sent to the hand")
      : `not sent: ${v.explain.headline} (last decision ${fmt(d.age_s, 1)} s ago)`;
  }
  const thr = v.threshold;
  INTENTS.forEach((n, i) => {
    const p = d && d.probabilities ? d.probabilities[i] : null;
    $(`prob-${n}`).style.width = (typeof p === "number") ? `${(p * 100).toFixed(1)}%` : "0";
    $(`p-${n}`).textContent = (typeof p === "number") ? p.toFixed(2) : "-";
  });
  document.querySelectorAll(".bar .thr").forEach((el) => {
    el.hidden = typeof thr !== "number";
    if (typeof thr === "number") el.style.left = `${thr * 100}%`;
  });
}

function setupStrips() {
  const box = $("emg");
  for (let ch = 0; ch < 8; ch++) {
    const c = document.createElement("canvas");
    c.id = `emg-${ch}`;
    c.width = 600; c.height = 46;
    box.appendChild(c);
  }
}

function drawEmg(v) {
  if (!v.stream.connected) emg = [];  // the armband is gone: no old signal shown as if current
  const rate = v.emg_rate || 20;
  const keep = Math.round(rate * EMG_SECONDS);
  if (emg.length > keep) emg = emg.slice(emg.length - keep);
  const range = v.model.input_range;
  const lim = range ? Math.max(Math.abs(range[0]), Math.abs(range[1])) : null;
  for (let ch = 0; ch < 8; ch++) {
    const c = $(`emg-${ch}`);
    if (!c) continue;
    const ctx = c.getContext("2d");
    ctx.clearRect(0, 0, c.width, c.height);
    // each strip scaled to its own amplitude (at least 5 % of the armband's range), so quiet channels show
    let scale = lim ? 0.05 * lim : 1e-9;
    for (const [, s] of emg) scale = Math.max(scale, Math.abs(s[ch] || 0));
    ctx.strokeStyle = "#3466c2";
    ctx.beginPath();
    emg.forEach(([, s], i) => {
      const x = c.width * (i + keep - emg.length) / keep;
      const y = c.height / 2 - (s[ch] || 0) / scale * (c.height / 2 - 2);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
    if (lim) {
      ctx.fillStyle = "#d02020";
      emg.forEach(([, s], i) => {
        if (range && (s[ch] <= range[0] || s[ch] >= range[1])) {
          ctx.fillRect(c.width * (i + keep - emg.length) / keep - 1, 0, 3, c.height);
        }
      });
    }
    ctx.fillStyle = "#555";
    ctx.fillText(`ch ${ch + 1}`, 4, 12);
    if (!v.stream.connected && ch === 0) ctx.fillText("armband off", c.width / 2 - 30, c.height / 2 + 4);
  }
  const s = v.stream;
  $("rate").textContent = s.connected
    ? `${s.name || "armband"}: ${fmt(s.measured_rate, 1)} samples/s, saturated ${fmt(100 * (s.saturated_fraction || 0), 0)} %`
    : (s.problem || "no armband stream");
}

function drawFooter(v) {
  const l = v.latency;
  $("latency").textContent = l ? `latency p50 ${fmt(l.p50_ms)} ms, p99 ${fmt(l.p99_ms)} ms` : "latency -";
  $("model").textContent = `running ${modelWords(v.model.about)}`;
  const ul = $("events");
  ul.replaceChildren();
  for (const e of v.events.slice().reverse()) {
    const li = document.createElement("li");
    li.textContent = `${when(e.t_wall)} ${e.text}`;
    ul.appendChild(li);
  }
}

function drawSession(v) {
  const s = v.session;
  const on = Boolean(s);  // null: the controller keeps no sessions (a rehearsal rig)
  $("btn-session").hidden = !on;
  $("btn-end-session").hidden = !on || !s.patient;
  $("rehearsal-box").hidden = on;
  $("session-line").textContent = !on ? "This controller keeps no sessions (a rehearsal): enter a patient id to calibrate for one."
    : !s.patient ? "No session: enter the patient's id and open a session."
    : `Session: ${s.patient}, opened ${when(s.opened)}; ${modelWords(s.model)}${s.kept ? "; in use" : "; not in use yet: keep it or calibrate"}.`;
  if (on && s.patient && document.activeElement !== $("patient")) $("patient").value = s.patient;
  $("patient").disabled = on && Boolean(s.patient);
  const why = v.calibration_blocked || (!on && !$("patient").value.trim() && !$("rehearsal").checked
    ? "enter the patient's id, or choose an anonymous rehearsal" : null);
  $("btn-calibrate").disabled = Boolean(why) || !socketOpen;
  $("calibrate-why").textContent = why ? `Calibration: ${why}.` : "";
}

function drawCue(v) {
  const cue = v.cue;
  const running = v.job && v.job.kind === "calibrate" && v.job.state === "running";
  const overlay = $("cue-overlay");
  const show = Boolean(running && cue && cue.cue !== "done");
  overlay.hidden = !show;
  if (!show) return;
  const name = cue.cue;
  overlay.className = `cue-${name}`;
  const left = Math.max(0, (cue.remaining_s || 0) - (cue.age_s || 0));
  $("cue-word").textContent = name === "countdown" ? "GET READY" : name.toUpperCase();
  $("cue-instruction").textContent = name === "countdown" ? "the calibration starts in" : (INSTRUCTIONS[name] || "");
  $("cue-count").textContent = Math.ceil(left).toString();
  const n = cue.n_cues || 1;
  const done = name === "countdown" ? 0 : Math.min(1, (cue.index + 1) / n);
  $("cue-progress-bar").style.width = `${(done * 100).toFixed(0)}%`;
  $("cue-step").textContent = name === "countdown" ? "" : `step ${cue.index + 1} of ${n}`;
}

function pct(x) { const n = Number(x); return (x !== null && x !== undefined && Number.isFinite(n)) ? `${Math.round(100 * n)} %` : "-"; }

// a table built with DOM calls: every cell's text set with textContent, never parsed as markup;
// the first row and the first column are headers
function table(id, rows) {
  const t = document.createElement("table");
  if (id) t.id = id;
  rows.forEach((row, r) => {
    const tr = document.createElement("tr");
    row.forEach((cell, i) => {
      const c = document.createElement(r === 0 || i === 0 ? "th" : "td");
      if (cell && typeof cell === "object") { c.textContent = cell.text; if (cell.id) c.id = cell.id; }
      else c.textContent = String(cell);
      tr.appendChild(c);
    });
    t.appendChild(tr);
  });
  return t;
}

function paragraph(id, text, className) {
  const p = document.createElement("p");
  p.id = id;
  p.textContent = text;
  if (className) p.className = className;
  return p;
}

function drawJob(v) {
  const j = v.job;
  $("btn-install-anyway").hidden = !(j && j.kind === "calibrate" && j.state === "refused");
  if (!j) return;
  const r = j.result || {};
  const what = { calibrate: "Calibration", install: "Install", rollback: "Rollback" }[j.kind];
  const states = {
    running: j.kind === "calibrate" ? "recording and adapting ..." : "running ...",
    done: j.kind === "rollback" ? "done" : "passed the gate and installed",
    refused: "refused by the gate: nothing installed",
    failed: `failed: ${j.error}`,
    cancelled: "cancelled (the partial clip is kept)",
  };
  $("cal-status").textContent = `${what}${j.patient ? " for " + j.patient : ""}: ${states[j.state] || j.state}`;
  const out = $("cal-result");
  if (j.kind === "rollback" && r.model_id) {
    out.replaceChildren(paragraph("rollback-line", `Now model ${r.model_id} (it was ${r.replaced_model_id}).` +
      (r.calibrated === false ? " WARNING: the uncalibrated base model: the hand will not move." : "")));
    return;
  }
  shownRefused = j.state === "refused" ? r.clip_sha256 : null;
  if (typeof r.accuracy_after !== "number") { out.textContent = j.state === "running" ? "" : (j.lines || []).slice(-3).join("\n"); return; }
  const recallRows = INTENTS.map((n) => [n, pct((r.recall_before || {})[n]), pct((r.recall_after || {})[n])]);
  const cm = Array.isArray(r.confusion_after) ? r.confusion_after : [];
  const cmRows = cm.map((row, i) => [INTENTS[i] || "?", ...(Array.isArray(row) ? row : []).map((x) => String(Number(x)))]);
  const gate = r.gate || {};
  const moveRows = typeof r.move_activation_after === "number"
    ? [["wrist movements moving the hand", pct(r.move_activation_before), { text: pct(r.move_activation_after), id: "move-after" }]]
    : [];
  out.replaceChildren(
    table("cal-table", [
      ["", "before", "after"],
      ["accuracy", { text: pct(r.accuracy_before), id: "acc-before" }, { text: pct(r.accuracy_after), id: "acc-after" }],
      ...recallRows,
      ...moveRows,
    ]),
    table("cal-confusion", [["cued \\ decided", ...INTENTS], ...cmRows]),
    operatingPoints(r, j),
    paragraph("gate-line", `Gate: ${gate.line || "-"}`, gate.passed === true ? "gate-pass" : "gate-refuse"),
    paragraph("install-line", r.installed ? `Installed: model ${r.model_id}.` : "Nothing installed: the current model stays."),
  );
}

// the clip's own cross-validated figures at each operating point; "Use" calibrates again from the
// same clip at that point (through the gate, as any calibration)
function operatingPoints(r, j) {
  const points = r.operating_points || {};
  const names = Object.keys(points);
  const box = document.createElement("div");
  box.id = "operating-points";
  if (!names.length) return box;
  box.appendChild(paragraph(null, "Operating point (the clip's own cross-validated figures):"));
  const t = table("op-table", [["", "wrist movements moving the hand", "open", "close", ""],
    ...names.map((n) => [`${n}: ${points[n].words}`, pct(points[n].move_activation), pct((points[n].recall || {}).open),
      pct((points[n].recall || {}).close), n === r.operating_point ? "in use" : ""])]);
  names.forEach((n, i) => {
    if (n === r.operating_point || j.state === "running" || !r.clip_sha256) return;
    const b = document.createElement("button");
    b.textContent = `Use ${n}`;
    b.id = `use-${n}`;
    b.onclick = () => confirmThen(`Calibrate again from the same clip, ${n} (${points[n].words})? ${MOVES}`, async () => {
      const a = await post("/api/operating-point", { point: n, clip_sha256: r.clip_sha256 });
      if (!a.ok) $("cal-status").textContent = a.error;
    });
    t.rows[i + 1].cells[4].appendChild(b);
  });
  box.appendChild(t);
  return box;
}

async function refreshModels() {
  try {
    const m = await get("/api/models");
    // what runs is the controller's (the banner's line below the EMG); these are the calibration's files
    $("models").textContent = `Last installed: ${modelWords(m.current)}. Roll back to: ${modelWords(m.previous)}.`;
  } catch (e) { /* the next refresh tries again */ }
}

function draw(v) {
  view = v;
  drawBanner(v);
  drawHand(v);
  drawDecision(v);
  drawEmg(v);
  drawFooter(v);
  drawSession(v);
  drawJob(v);
  drawCue(v);
}

// ---------------------------------------------------------------------------------------- the socket
let lastJobState = null;
const NO_TOKEN = { state: "unknown", headline: "NOT SIGNED IN", meaning: "this page was opened without the console's token",
  next_step: "open the URL metaemg-console printed (it carries the token) in this tab", action: null, severity: "fault", live: false };

function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.onopen = () => { ws.send(JSON.stringify({ token: TOKEN })); socketOpen = true; };
  ws.onmessage = (ev) => {
    const v = JSON.parse(ev.data);
    const e = v.emg;
    e.samples.forEach((s, i) => emg.push([e.first + i, s]));
    const jobState = v.job ? `${v.job.kind}:${v.job.state}:${v.job.started_wall}` : null;
    if (jobState !== lastJobState) { lastJobState = jobState; refreshModels(); }
    draw(v);
  };
  ws.onclose = (ev) => {
    socketOpen = false;
    if (ev.code === 4401) { drawBanner({ explain: NO_TOKEN }); return; }  // the token is wrong: no retry
    const lost = { state: "unknown", headline: "CONSOLE DISCONNECTED", meaning: "the page lost its connection to metaemg-console",
      next_step: "check that metaemg-console runs, then reload this page", action: null, severity: "fault", live: false };
    if (view) draw({ ...view, explain: lost, decision: view.decision && { ...view.decision, live: false }, cue: null, job: view.job && { ...view.job, state: view.job.state === "running" ? "failed" : view.job.state } });
    else drawBanner({ explain: lost });
    setTimeout(connect, 1000);
  };
}

setupStrips();
if (!TOKEN) {
  drawBanner({ explain: NO_TOKEN });
} else {
  get("/api/instructions").then((x) => { INSTRUCTIONS = x; }, () => {});
  refreshModels();
  connect();
}
