"use strict";
// /view/<viewer>: one session's avatar over WHEP, full-window: an OBS Browser Source or a
// window to share. <viewer> is the playback capability (the session's `Link: </whep/<viewer>>;
// rel="whep"`). ?clean=1 removes the info box; otherwise it shows the WHEP URL for copying
// and hides after a few seconds. The page reconnects by itself when the connection drops or
// the session has no free player slot (a session that has ended does not come back: a new
// session has a new link).

const params = new URLSearchParams(location.search);
const clean = params.get("clean") === "1";
const viewer = decodeURIComponent(location.pathname.replace(/\/+$/, "").split("/").pop() || "");
const whepUrl = `${location.origin}/whep/${encodeURIComponent(viewer)}`;
const video = document.getElementById("avatar");
const info = document.getElementById("info");
const HIDE_AFTER_MS = 8000;

// read by tests and by anyone debugging in the console
window.rtpView = { state: "new", error: null, whepUrl, attempts: 0, connected: 0 };

function say(text, isError) {
  rtpView.state = text;
  rtpView.error = isError ? text : null;
  if (isError) console.warn(`rt-portrait view: ${text}`);
  const el = document.getElementById("status");
  if (el) { el.textContent = text; el.classList.toggle("error", !!isError); }
}

// ---- the info box ----
let hideTimer = null;
function showInfo() {
  if (!info) return;
  info.classList.remove("hidden");
  clearTimeout(hideTimer);
  hideTimer = setTimeout(() => info.classList.add("hidden"), HIDE_AFTER_MS);
}

async function copy(input, button) {
  input.select();
  try { await navigator.clipboard.writeText(input.value); }
  catch (e) { document.execCommand && document.execCommand("copy"); } // not a secure context
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

if (clean) {
  info.remove();
} else {
  const cleanUrl = new URL(location.href);
  cleanUrl.searchParams.set("clean", "1");
  document.getElementById("whep-url").value = whepUrl;
  document.getElementById("clean-url").value = cleanUrl.href;
  document.querySelectorAll("button.copy").forEach((b) => {
    b.addEventListener("click", () => copy(document.getElementById(b.dataset.for), b));
  });
  ["mousemove", "keydown", "touchstart"].forEach((ev) => document.addEventListener(ev, showInfo));
  info.addEventListener("mouseenter", () => clearTimeout(hideTimer));
  showInfo();
}

// ---- WHEP playback ----
let pc = null;
let resource = null; // the Location of this playback, to end it when the page goes away
let retryTimer = null;

function waitForIceGathering(conn, timeoutMs) {
  // the server does not trickle: the offer must carry every candidate
  if (conn.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { conn.removeEventListener("icegatheringstatechange", check); clearTimeout(timer); resolve(); };
    const check = () => { if (conn.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, timeoutMs);
    conn.addEventListener("icegatheringstatechange", check);
  });
}

async function errorText(resp) {
  try { const j = await resp.json(); return j.error || resp.statusText; } catch (e) { return resp.statusText; }
}

function endPlayback() {
  if (resource) fetch(resource, { method: "DELETE", keepalive: true }).catch(() => {});
  resource = null;
  if (pc) { pc.ontrack = null; pc.onconnectionstatechange = null; pc.close(); }
  pc = null;
}

function retry(why, isError) {
  endPlayback();
  const delay = Math.min(2000 * 2 ** Math.min(rtpView.attempts, 3), 10000);
  say(`${why}; retrying in ${Math.round(delay / 1000)} s`, isError);
  clearTimeout(retryTimer);
  retryTimer = setTimeout(play, delay);
}

async function play() {
  if (!viewer) { say("no playback link in this address: it must be /view/<viewer>", true); return; }
  rtpView.attempts += 1;
  say("connecting…");
  const conn = new RTCPeerConnection({ iceServers: [] });
  pc = conn;
  conn.addTransceiver("video", { direction: "recvonly" });
  conn.ontrack = (ev) => {
    video.srcObject = new MediaStream([ev.track]);
    video.play().catch(() => {}); // muted autoplay is allowed; OBS allows it too
    ev.track.onended = () => { if (pc === conn) retry("the avatar stream ended"); };
  };
  conn.onconnectionstatechange = () => {
    if (pc !== conn) return;
    const s = conn.connectionState;
    if (s === "connected") { rtpView.connected += 1; rtpView.attempts = 0; say("playing"); }
    else if (s === "failed" || s === "closed") retry("the connection ended (the session may have stopped)");
  };
  try {
    await conn.setLocalDescription(await conn.createOffer());
    await waitForIceGathering(conn, 5000);
    const resp = await fetch(whepUrl, {
      method: "POST", headers: { "Content-Type": "application/sdp" }, body: conn.localDescription.sdp,
    });
    if (pc !== conn) return;
    if (resp.status !== 201) {
      const why = await errorText(resp);
      if (resp.status === 404) retry("no live session has this link (it has ended, or the link is mistyped)", true);
      else if (resp.status === 503) retry(`the session has no free player slot (${why})`, true);
      else retry(`the server refused playback (${resp.status}: ${why})`, true);
      return;
    }
    const loc = resp.headers.get("Location");
    resource = loc ? new URL(loc, whepUrl).href : null;
    await conn.setRemoteDescription({ type: "answer", sdp: await resp.text() });
  } catch (e) {
    if (pc === conn) retry(`could not reach the server (${e.message || e})`, true);
  }
}

window.addEventListener("pagehide", endPlayback);
play();
