// Emote web client: pick or upload a portrait, call the avatar over WebRTC (with the microphone or
// text only), make it speak typed text, hang up, and watch live stats. Plain ES module, no build step.
//
// Tests read window.emote: {state, stats, lastError, sessionId}. state is one of
// "idle" | "connecting" | "connected" | "ended" | "failed".

const $ = (id) => document.getElementById(id);
const ui = {
  video: $("video"), screen: $("screen"), status: $("status"), portraits: $("portraits"), upload: $("upload"),
  callMic: $("call-mic"), callText: $("call-text"), hangup: $("hangup"), sayForm: $("say-form"),
  sayText: $("say-text"), say: $("say"),
  stat: {
    fps: $("stat-fps"), latency: $("stat-latency"), av: $("stat-av"), rtt: $("stat-rtt"),
    video: $("stat-video"), server: $("stat-server"),
  },
};

const emote = { state: "idle", stats: {}, lastError: null, sessionId: null };
window.emote = emote;

const ICE_GATHERING_TIMEOUT_MS = 3000;
const DISCONNECT_GRACE_MS = 4000;
const UNREACHABLE = `Can't reach the Emote server at ${location.origin}. Check that \`emote serve\` is running, then try again.`;

/** An error meant for the person, already in words. */
class UserError extends Error {}

let selectedPortrait = null; // portrait id, or null for the server's default
let call = null; // {pc, stream, sessionId, withMic, connected, previous (stats), timers}

// ---------------------------------------------------------------- status and state

function showStatus(message, kind = "info") {
  ui.status.textContent = message;
  ui.status.dataset.kind = kind;
}

function showError(message) {
  emote.lastError = message;
  showStatus(message, "error");
}

function setState(state) {
  emote.state = state;
  const busy = state === "connecting" || state === "connected";
  ui.callMic.disabled = busy;
  ui.callText.disabled = busy;
  ui.hangup.disabled = !busy;
  ui.upload.disabled = busy;
  ui.upload.parentElement.setAttribute("aria-disabled", String(busy));
  for (const radio of ui.portraits.querySelectorAll("input")) radio.disabled = busy;
  ui.screen.dataset.live = String(state === "connected");
}

// ---------------------------------------------------------------- HTTP

async function request(path, options = {}) {
  try {
    return await fetch(path, options);
  } catch {
    throw new UserError(UNREACHABLE);
  }
}

async function serverMessage(response, fallback) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") return body.error;
  } catch {
    // not JSON: fall through to the generic message
  }
  return `${fallback} (HTTP ${response.status}).`;
}

// ---------------------------------------------------------------- portraits

async function loadPortraits(select = null) {
  const response = await request("/portraits");
  if (!response.ok) throw new UserError(await serverMessage(response, "The server could not list the portraits"));
  const { portraits = [] } = await response.json();
  ui.portraits.replaceChildren();
  if (portraits.length === 0) {
    const note = document.createElement("p");
    note.className = "hint";
    note.textContent = "No portraits yet: upload a photo, or call to use the server's default.";
    ui.portraits.append(note);
  }
  const wanted = select ?? selectedPortrait;
  selectedPortrait = portraits.some((p) => p.id === wanted) ? wanted : (portraits[0]?.id ?? null);
  for (const portrait of portraits) {
    const label = document.createElement("label");
    label.className = "portrait";
    label.title = portrait.source === "uploaded" ? `${portrait.name} (uploaded)` : portrait.name;
    const radio = document.createElement("input");
    radio.type = "radio";
    radio.name = "portrait";
    radio.value = portrait.id;
    radio.className = "visually-hidden";
    radio.checked = portrait.id === selectedPortrait;
    radio.addEventListener("change", () => { selectedPortrait = portrait.id; });
    const image = document.createElement("img");
    image.src = portrait.image_url;
    image.alt = "";
    image.loading = "lazy";
    const name = document.createElement("span");
    name.textContent = portrait.name;
    label.append(radio, image, name);
    ui.portraits.append(label);
  }
  setState(emote.state); // new radios follow the busy state
}

async function uploadPortrait(file) {
  const clip = file.type.startsWith("video/");
  showStatus(clip ? `Uploading ${file.name} (a clip is measured frame by frame: this takes a few seconds)…`
    : `Uploading ${file.name}…`);
  const form = new FormData();
  form.append("image", file);
  const response = await request("/portraits", { method: "POST", body: form });
  if (!response.ok) {
    const what = clip ? "clip" : "photo";
    const fallback = response.status === 413 ? `The ${what} is too large for this server` : `The server rejected the ${what}`;
    throw new UserError(`Portrait rejected: ${await serverMessage(response, fallback)}`);
  }
  const { portrait_id: portraitId } = await response.json();
  await loadPortraits(portraitId);
  showStatus("Portrait added and selected. Start a call to see it talk.", "ok");
}

// ---------------------------------------------------------------- the call

async function microphone() {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new UserError("This browser gives no microphone access here: open the page over https or on localhost, " +
      "or use “Call (text only)”.");
  }
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
  } catch (error) {
    if (error.name === "NotAllowedError" || error.name === "SecurityError") {
      throw new UserError("Microphone access was denied. Emote needs only your microphone — no camera. Allow the " +
        "microphone for this site (the icon in the address bar) and call again, or use “Call (text only)”.");
    }
    if (error.name === "NotFoundError" || error.name === "OverconstrainedError") {
      throw new UserError("No microphone was found. Connect one and call again, or use “Call (text only)”.");
    }
    if (error.name === "NotReadableError") {
      throw new UserError("The microphone is busy in another application. Close it there, or use “Call (text only)”.");
    }
    throw new UserError(`The microphone could not be opened (${error.name}). Try “Call (text only)”.`);
  }
}

function iceGatheringComplete(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, ICE_GATHERING_TIMEOUT_MS); // send what was gathered so far
    pc.addEventListener("icegatheringstatechange", check);
  });
}

async function startCall(withMic) {
  if (call) return call;
  emote.lastError = null;
  const current = { pc: null, stream: null, sessionId: null, withMic, previous: null, timers: {} };
  current.connected = new Promise((resolve) => { current.onConnected = resolve; });
  call = current;
  setState("connecting");
  showStatus(withMic ? "Asking for the microphone…" : "Connecting…");
  try {
    if (withMic) {
      const stream = await microphone();
      if (call !== current) {
        // Hung up (or called again) while the browser asked for the microphone: endCall ran before there
        // was a stream to stop, so stop it here, or the microphone would stay on with no call.
        stream.getTracks().forEach((track) => track.stop());
        return null;
      }
      current.stream = stream;
      showStatus("Connecting…");
    }
    const pc = new RTCPeerConnection({ iceServers: [] });
    current.pc = pc;
    const remote = new MediaStream();
    pc.addEventListener("track", (event) => {
      remote.addTrack(event.track);
      ui.video.srcObject = remote; // video and the avatar's voice play from the same element
    });
    pc.addEventListener("connectionstatechange", () => onConnectionState(current));
    pc.addTransceiver("video", { direction: "recvonly" });
    if (current.stream) {
      const [track] = current.stream.getAudioTracks();
      pc.addTransceiver(track, { direction: "sendrecv", streams: [current.stream] });
    } else {
      pc.addTransceiver("audio", { direction: "recvonly" });
    }
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc);
    if (call !== current) return null;

    const body = { sdp: pc.localDescription.sdp, type: pc.localDescription.type };
    if (selectedPortrait) body.portrait = selectedPortrait;
    const response = await request("/offer", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (!response.ok) {
      if (response.status === 503) {
        const wait = response.headers.get("Retry-After");
        throw new UserError(`${await serverMessage(response, "The server is busy with other calls")}` +
          (wait ? ` Try again in ${wait} s.` : ""));
      }
      const prefix = response.status === 404 ? "Portrait rejected: " : "The call could not start: ";
      throw new UserError(prefix + await serverMessage(response, "the server refused the call"));
    }
    const answer = await response.json();
    current.sessionId = answer.session_id;
    emote.sessionId = answer.session_id;
    if (call !== current) {
      deleteSession(answer.session_id);
      return null;
    }
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    current.timers.stats = setInterval(() => updateStats(current), 1000);
    return current;
  } catch (error) {
    if (call === current) endCall(error instanceof UserError ? error.message : `The call failed: ${error.message}`);
    return null;
  }
}

function onConnectionState(current) {
  if (call !== current) return;
  const state = current.pc.connectionState;
  if (state === "connected") {
    clearTimeout(current.timers.disconnect);
    current.onConnected();
    setState("connected");
    showStatus(current.withMic
      ? "In a call. Speak and the avatar mouths your words; type below to make it talk."
      : "In a call. Type something below and press Speak.", "ok");
    ui.video.play().catch(() => {
      ui.video.controls = true;
      showStatus("In a call. Press play on the video to see and hear the avatar.", "ok");
    });
  } else if (state === "failed") {
    endCall("The call failed: no media connection could be made to the server. Check the network and call again.");
  } else if (state === "disconnected") {
    current.timers.disconnect = setTimeout(() => {
      if (call === current && current.pc.connectionState !== "connected") {
        endCall("The call was disconnected: the server stopped answering.");
      }
    }, DISCONNECT_GRACE_MS);
  } else if (state === "closed") {
    endCall("The call was closed by the server.");
  }
}

function deleteSession(sessionId) {
  // keepalive lets the hang-up reach the server even while the page unloads
  fetch(`/sessions/${encodeURIComponent(sessionId)}`, { method: "DELETE", keepalive: true }).catch(() => {});
}

/** Ends the current call; with `error`, the call ends as failed and the person reads why. */
function endCall(error = null) {
  const current = call;
  if (!current) return;
  call = null;
  clearInterval(current.timers.stats);
  clearTimeout(current.timers.disconnect);
  if (current.sessionId) deleteSession(current.sessionId);
  current.pc?.close();
  current.stream?.getTracks().forEach((track) => track.stop());
  ui.video.srcObject = null;
  ui.video.controls = false;
  emote.sessionId = null;
  setState(error ? "failed" : "ended");
  if (error) showError(error);
  else showStatus("Call ended. Start a new one whenever you like.");
}

async function say(text) {
  let current = call;
  if (!current) current = await startCall(false);
  if (!current) return;
  if (emote.state !== "connected") {
    // Speech sent before the media flows would play to no one: wait for the connection.
    showStatus("Connecting… the avatar will speak once the call is up.");
    await Promise.race([current.connected, new Promise((resolve) => setTimeout(resolve, 15000))]);
    if (call !== current || emote.state !== "connected") return; // hung up or failed meanwhile (already shown)
  }
  const response = await request(`/sessions/${encodeURIComponent(current.sessionId)}/say`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text }),
  });
  if (!response.ok) throw new UserError(`The avatar could not say that: ${await serverMessage(response, "error")}`);
  ui.sayText.value = "";
  showStatus(`Saying: “${text.length > 80 ? `${text.slice(0, 80)}…` : text}”`, "ok");
}

// ---------------------------------------------------------------- live stats

const perSecond = (now, before, key, seconds) =>
  before && now[key] !== undefined && before[key] !== undefined ? (now[key] - before[key]) / seconds : undefined;

function jitterBufferMs(now, before) {
  if (!now || !now.jitterBufferEmittedCount) return undefined;
  const emitted = now.jitterBufferEmittedCount - (before?.jitterBufferEmittedCount ?? 0);
  const delay = now.jitterBufferDelay - (before?.jitterBufferDelay ?? 0);
  // the last second's average; the running average when nothing came out since
  return emitted > 0 ? (1000 * delay) / emitted : (1000 * now.jitterBufferDelay) / now.jitterBufferEmittedCount;
}

async function updateStats(current) {
  if (call !== current || !current.pc) return;
  const report = await current.pc.getStats();
  let video, audio, pair, transport;
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") video = s;
    else if (s.type === "inbound-rtp" && s.kind === "audio") audio = s;
    else if (s.type === "transport") transport = s;
  });
  pair = transport?.selectedCandidatePairId && report.get(transport.selectedCandidatePairId);
  if (!pair) report.forEach((s) => { if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s; });

  const before = current.previous;
  const seconds = before ? (video?.timestamp - before.video?.timestamp) / 1000 || 1 : 1;
  const fps = video?.framesPerSecond ?? perSecond(video ?? {}, before?.video, "framesDecoded", seconds);
  const rttMs = pair?.currentRoundTripTime !== undefined ? pair.currentRoundTripTime * 1000 : undefined;
  const videoJbMs = jitterBufferMs(video, before?.video);
  const audioJbMs = jitterBufferMs(audio, before?.audio);
  current.previous = { video, audio };

  emote.stats = {
    fps,
    framesDecoded: video?.framesDecoded,
    framesDropped: video?.framesDropped,
    width: video?.frameWidth,
    height: video?.frameHeight,
    rttMs,
    videoJitterBufferMs: videoJbMs,
    audioJitterBufferMs: audioJbMs,
    latencyMs: videoJbMs !== undefined ? (rttMs ?? 0) / 2 + videoJbMs : undefined,
    avOffsetMs: videoJbMs !== undefined && audioJbMs !== undefined ? videoJbMs - audioJbMs : undefined,
    audioEnergy: audio?.totalAudioEnergy,
    audioLevel: audio?.audioLevel,
    server: emote.stats.server,
  };
  await updateServerStats(current);
  renderStats(emote.stats);
}

async function updateServerStats(current) {
  if (current.serverStats === false || !current.sessionId) return;
  try {
    const response = await fetch(`/sessions/${encodeURIComponent(current.sessionId)}/stats`);
    if (!response.ok) {
      current.serverStats = false; // this server has no per-session stats: stop asking
      emote.stats.server = undefined;
      return;
    }
    emote.stats.server = await response.json();
  } catch {
    emote.stats.server = undefined;
  }
}

const number = (value, digits = 0) => (Number.isFinite(value) ? value.toFixed(digits) : "–");

function serverSummary(server) {
  if (!server || typeof server !== "object") return "–";
  const parts = [];
  if (Number.isFinite(server.latency_ms_p50)) parts.push(`p50 ${number(server.latency_ms_p50)} ms`);
  if (Number.isFinite(server.latency_ms_p95)) parts.push(`p95 ${number(server.latency_ms_p95)} ms`);
  if (Number.isFinite(server.frames) && Number.isFinite(server.late_frames) && server.frames > 0) {
    parts.push(`${number((100 * server.late_frames) / server.frames, 1)} % late`);
  }
  if (parts.length === 0) {
    for (const [key, value] of Object.entries(server)) {
      if (Number.isFinite(value) && parts.length < 3) parts.push(`${key.replaceAll("_", " ")} ${number(value, 1)}`);
    }
  }
  return parts.join(" · ") || "–";
}

function renderStats(stats) {
  ui.stat.fps.textContent = Number.isFinite(stats.fps) ? `${number(stats.fps, 1)} fps` : "–";
  ui.stat.latency.textContent = Number.isFinite(stats.latencyMs) ? `≈ ${number(stats.latencyMs)} ms` : "–";
  ui.stat.av.textContent = Number.isFinite(stats.avOffsetMs)
    ? `${stats.avOffsetMs >= 0 ? "+" : "−"}${number(Math.abs(stats.avOffsetMs))} ms` : "–";
  ui.stat.rtt.textContent = Number.isFinite(stats.rttMs) ? `${number(stats.rttMs, 1)} ms` : "–";
  ui.stat.video.textContent = stats.width ? `${stats.width}×${stats.height}` : "–";
  ui.stat.server.textContent = serverSummary(stats.server);
}

// ---------------------------------------------------------------- wiring

function guard(action) {
  return async (...args) => {
    try {
      await action(...args);
    } catch (error) {
      showError(error instanceof UserError ? error.message : `Something went wrong: ${error.message}`);
    }
  };
}

ui.callMic.addEventListener("click", guard(() => startCall(true)));
ui.callText.addEventListener("click", guard(() => startCall(false)));
ui.hangup.addEventListener("click", () => endCall());
ui.sayForm.addEventListener("submit", guard(async (event) => {
  event.preventDefault();
  const text = ui.sayText.value.trim();
  if (!text) {
    ui.sayText.focus();
    return;
  }
  await say(text);
}));
ui.upload.addEventListener("change", guard(async () => {
  const [file] = ui.upload.files;
  ui.upload.value = "";
  if (file) await uploadPortrait(file);
}));
window.addEventListener("pagehide", () => endCall());

setState("idle");
guard(async () => {
  await loadPortraits();
  showStatus("Pick a portrait, then start a call.");
})();
