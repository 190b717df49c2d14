// rt-portrait page: camera up, avatar down, controls as JSON POSTs, stats polled.
// window.rtp exposes the state for automated tests (selenium reads it).
"use strict";

const EDITS = {
  yaw: [-45, 45, 1], pitch: [-45, 45, 1], roll: [-45, 45, 1], jaw_open: [0, 1, 0.01],
  smile: [-1, 1, 0.01], blink_left: [0, 1, 0.01], blink_right: [0, 1, 0.01],
  brow_raise: [-1, 1, 0.01], gaze_x: [-1, 1, 0.01], gaze_y: [-1, 1, 0.01],
};
const STRENGTHS = { pose: [0, 2, 0.05], expression: [0, 2, 0.05], eyes: [0, 2, 0.05], mouth: [0, 2, 0.05] };

const $ = (id) => document.getElementById(id);
const rtp = (window.rtp = {
  state: "idle", session: null, error: null, message: "",
  framesSent: 0, framesReceived: 0, framesDecoded: 0, fpsReceived: 0,
  latencyEstimateMs: null, latencyParts: {}, server: null, latencyLog: [],
});
let pc = null, stream = null, statsTimer = null, pendingSource = null;
// A server started with --token is opened as /#token=<token>: the fragment never reaches the
// server's logs; the page sends it as a Bearer token when it starts a session.
const serverToken = new URLSearchParams(location.hash.slice(1)).get("token");

function say(text, isError = false) {
  rtp.message = text;
  if (isError) rtp.error = text;
  $("msg").textContent = text;
  $("msg").className = isError ? "error" : "";
}
function setState(s) { rtp.state = s; $("state").textContent = s; }

async function errorText(resp) {
  try { const j = await resp.json(); return j.error || JSON.stringify(j); } catch (e) { return resp.statusText; }
}

function buildSliders(container, spec, group) {
  for (const [name, [min, max, step]] of Object.entries(spec)) {
    const label = document.createElement("label");
    const value = group === "strengths" ? 1 : 0;
    label.innerHTML = `<span>${name}</span><input type="range" min="${min}" max="${max}" step="${step}" value="${value}" data-group="${group}" data-name="${name}"><output>${value}</output>`;
    const input = label.querySelector("input");
    input.addEventListener("input", () => {
      label.querySelector("output").textContent = input.value;
      queueControl(group, name, parseFloat(input.value));
    });
    container.appendChild(label);
  }
}

// Controls: keep only the newest value per slider; one request in flight at a time.
let pendingControls = {}, controlInFlight = false;
function queueControl(group, name, value) {
  pendingControls[group] = pendingControls[group] || {};
  pendingControls[group][name] = value;
  flushControls();
}
async function flushControls() {
  if (controlInFlight || !rtp.session || Object.keys(pendingControls).length === 0) return;
  const body = pendingControls; pendingControls = {}; controlInFlight = true;
  try {
    const resp = await fetch(`/session/${rtp.session}/control`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (!resp.ok) say(`control rejected: ${await errorText(resp)}`, true);
  } catch (e) { say(`control failed: ${e}`, true); }
  controlInFlight = false;
  if (Object.keys(pendingControls).length) flushControls();
}

// Before Start (and after Stop) the avatar area shows the source portrait: the server's, or
// the file picked for the next session. The live avatar replaces it once it plays.
let previewUrl = null;
function showPreview(file) {
  const img = $("preview");
  if (previewUrl) { URL.revokeObjectURL(previewUrl); previewUrl = null; }
  if (file) { previewUrl = URL.createObjectURL(file); img.src = previewUrl; } else { img.src = "/portrait"; }
  img.hidden = false;
  $("avatar-caption").textContent = "source portrait (press Start camera to animate it)";
}
function hidePreview() {
  $("preview").hidden = true;
  $("avatar-caption").textContent = "avatar";
}

async function uploadSource(file) {
  if (!rtp.session) {
    pendingSource = file; showPreview(file);
    say(`"${file.name}" will be used when the session starts`); return;
  }
  const form = new FormData(); form.append("image", file, file.name);
  say(`uploading "${file.name}"...`);
  const resp = await fetch(`/session/${rtp.session}/source`, { method: "POST", body: form });
  if (resp.ok) { const j = await resp.json(); say(`source: ${j.source} (${j.width}x${j.height})`); }
  else say(`upload rejected (${resp.status}): ${await errorText(resp)}`, true);
}

function waitForIceGathering(conn, timeoutMs) {
  // aiortc does not trickle: the offer must carry every candidate.
  if (conn.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { conn.removeEventListener("icegatheringstatechange", check); clearTimeout(timer); resolve(); };
    const check = () => { if (conn.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, timeoutMs);
    conn.addEventListener("icegatheringstatechange", check);
  });
}

async function start() {
  $("start").disabled = true; rtp.error = null;
  try {
    setState("camera");
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480, frameRate: 30 }, audio: false });
    $("camera").srcObject = stream;
    pc = new RTCPeerConnection({ iceServers: [] });
    pc.addTransceiver(stream.getVideoTracks()[0], { direction: "sendrecv" });
    pc.ontrack = (ev) => { $("avatar").srcObject = new MediaStream([ev.track]); };
    $("avatar").onplaying = hidePreview;
    pc.onconnectionstatechange = () => {
      setState(pc.connectionState);
      if (pc.connectionState === "failed") say("connection failed: the server is unreachable or ended the session", true);
    };
    setState("connecting");
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc, 5000);
    const headers = { "Content-Type": "application/json" };
    if (serverToken) headers.Authorization = `Bearer ${serverToken}`;
    const resp = await fetch("/offer", {
      method: "POST", headers,
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
    });
    if (!resp.ok) throw new Error(`server refused the call (${resp.status}): ${await errorText(resp)}`);
    const answer = await resp.json();
    rtp.session = answer.session; // the owner's capability: control, source, stats, end
    rtp.viewer = answer.viewer; // playback only: safe to hand to viewers
    const share = $("share");
    if (share && answer.viewer) {
      share.href = `/view/${answer.viewer}`;
      share.textContent = `${location.origin}/view/${answer.viewer}`;
      share.parentElement.hidden = false;
    }
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    $("stop").disabled = false; $("recalibrate").disabled = false;
    say("connected");
    if (pendingSource) { const f = pendingSource; pendingSource = null; await uploadSource(f); }
    pendingControls = currentControls(); flushControls();
    statsTimer = setInterval(pollStats, 500);
  } catch (e) {
    say(`${e.message || e}`, true);
    await stop();
  }
}

async function stop() {
  clearInterval(statsTimer); statsTimer = null;
  if (rtp.session) { try { await fetch(`/session/${rtp.session}`, { method: "DELETE" }); } catch (e) { /* gone already */ } }
  if (pc) pc.close();
  if (stream) stream.getTracks().forEach((t) => t.stop());
  pc = null; stream = null; rtp.session = null; rtp.viewer = null;
  showPreview(pendingSource);
  if ($("share")) $("share").parentElement.hidden = true;
  $("start").disabled = false; $("stop").disabled = true; $("recalibrate").disabled = true;
  setState("idle");
}

function currentControls() {
  const out = { edits: {}, strengths: {} };
  document.querySelectorAll("input[type=range]").forEach((i) => { out[i.dataset.group][i.dataset.name] = parseFloat(i.value); });
  return out;
}

let lastInbound = null;
async function pollStats() {
  if (!pc || !rtp.session) return;
  try {
    const resp = await fetch(`/session/${rtp.session}/stats`);
    if (resp.status === 404) { say("the server ended this session", true); await stop(); return; }
    rtp.server = await resp.json();
  } catch (e) { /* transient */ }
  const parts = {};
  const report = await pc.getStats();
  report.forEach((s) => {
    if (s.type === "outbound-rtp" && s.kind === "video") {
      rtp.framesSent = s.framesSent || 0;
      if (s.framesEncoded) parts.encode = (1000 * s.totalEncodeTime) / s.framesEncoded;
      if (s.packetsSent && s.totalPacketSendDelay !== undefined) parts.pacer = (1000 * s.totalPacketSendDelay) / s.packetsSent;
    } else if (s.type === "remote-inbound-rtp" && s.kind === "video" && s.roundTripTime !== undefined) {
      parts.network = 1000 * s.roundTripTime; // one way up + one way down
    } else if (s.type === "inbound-rtp" && s.kind === "video") {
      rtp.framesReceived = s.framesReceived || 0;
      rtp.framesDecoded = s.framesDecoded || 0;
      if (s.jitterBufferEmittedCount) parts.jitter_buffer = (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount;
      if (s.framesDecoded) parts.decode = (1000 * s.totalDecodeTime) / s.framesDecoded;
      const now = performance.now();
      if (lastInbound) rtp.fpsReceived = (1000 * (rtp.framesDecoded - lastInbound.n)) / (now - lastInbound.t);
      lastInbound = { n: rtp.framesDecoded, t: now };
    }
  });
  if (rtp.server) parts.server = rtp.server.age_ms;
  rtp.latencyParts = parts;
  // capture -> display: encode + pacing + network both ways + server (receive -> publish)
  // + jitter buffer + decode. The receiver decodes and the server re-encodes too; those are
  // inside "server" and "decode". An estimate, not a measurement.
  const total = Object.values(parts).reduce((a, b) => a + b, 0);
  rtp.latencyEstimateMs = Object.keys(parts).length ? total : null;
  if (rtp.latencyEstimateMs !== null && rtp.latencyLog.length < 600) rtp.latencyLog.push(rtp.latencyEstimateMs);
  if (rtp.server && rtp.server.face_found === false) say("no face in view: holding the last motion");
  else if (rtp.message.startsWith("no face in view")) say("connected");
  renderStats();
}

function renderStats() {
  const s = rtp.server || {};
  const rows = [
    ["state", rtp.state], ["frames sent / received", `${rtp.framesSent} / ${rtp.framesDecoded}`],
    ["fps received", rtp.fpsReceived.toFixed(1)], ["server fps in / out", `${s.fps_in ?? "-"} / ${s.fps_out ?? "-"}`],
    ["dropped (stale)", s.dropped ?? "-"], ["working size", `${s.size ?? "-"}${s.degrade_level ? ` (degraded ${s.degrade_level})` : ""}`],
    ["face", s.face_found === false ? "not found" : s.face_found ? "found" : "-"],
    ["latency estimate", rtp.latencyEstimateMs === null ? "-" : `${rtp.latencyEstimateMs.toFixed(0)} ms`],
  ];
  for (const [k, v] of Object.entries(s.stage_ms || {})) rows.push([`server ${k}`, `${v.toFixed(1)} ms`]);
  for (const [k, v] of Object.entries(rtp.latencyParts)) rows.push([`latency: ${k}`, `${v.toFixed(1)} ms`]);
  $("stats").tBodies[0].innerHTML = rows.map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join("");
}

// Test hook: both videos drawn to small canvases at the same instant.
window.rtpSnapshot = function (width = 192, type = "image/jpeg") {
  const grab = (video) => {
    if (!video.videoWidth) return null;
    const c = document.createElement("canvas");
    c.width = width; c.height = Math.round((width * video.videoHeight) / video.videoWidth);
    c.getContext("2d").drawImage(video, 0, 0, c.width, c.height);
    return c.toDataURL(type, 0.92);
  };
  return { t: performance.now(), camera: grab($("camera")), avatar: grab($("avatar")) };
};
window.rtpStart = start;
window.rtpStop = stop;
window.rtpUpload = uploadSource;

buildSliders($("edits"), EDITS, "edits");
buildSliders($("strengths"), STRENGTHS, "strengths");
$("start").onclick = start;
$("stop").onclick = stop;
$("recalibrate").onclick = async () => {
  const resp = await fetch(`/session/${rtp.session}/control`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ recalibrate: true }),
  });
  say(resp.ok ? "neutral recalibrated on the next frame" : `recalibrate failed: ${await errorText(resp)}`, !resp.ok);
};
$("reset").onclick = () => {
  document.querySelectorAll("input[type=range]").forEach((i) => {
    i.value = i.dataset.group === "strengths" ? 1 : 0;
    i.parentElement.querySelector("output").textContent = i.value;
  });
  pendingControls = currentControls(); flushControls();
};
$("source").onchange = (ev) => { if (ev.target.files[0]) uploadSource(ev.target.files[0]); };
$("default-source").onclick = () => {
  pendingSource = null;
  if (rtp.session) say("the default portrait applies to new sessions: stop and start again");
  else { $("source").value = ""; showPreview(null); say("the default portrait will be used"); }
};
window.addEventListener("beforeunload", () => { if (rtp.session) navigator.sendBeacon && fetch(`/session/${rtp.session}`, { method: "DELETE", keepalive: true }); });
