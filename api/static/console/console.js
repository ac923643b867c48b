// voicefarm console: vanilla JS, no build step. Every API call sends the key from localStorage as
// `Authorization: Bearer`; EventSource cannot send headers, so event streams are read with fetch.
"use strict";

const KEY = "voicefarm.apiKey";
const jobs = new Map(); // id -> latest job view
const streams = new Map(); // job id -> AbortController of its own event stream
let listStream = null;

const $ = (sel) => document.querySelector(sel);
const apiKey = () => localStorage.getItem(KEY) || "";

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (apiKey()) h.Authorization = "Bearer " + apiKey();
  return h;
}

function show(text, ok) {
  const m = $("#message");
  m.textContent = text;
  m.className = ok ? "message ok" : "message";
  m.hidden = !text;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const r = await fetch(path, opts);
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try {
      const body = await r.json();
      if (body && body.error) msg = body.error.code + ": " + body.error.message;
    } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return r.status === 204 ? null : r.json();
}

// Server-sent events over fetch: calls onEvent(name, data) per event until the stream ends.
async function readEvents(path, signal, onEvent) {
  const r = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!r.ok) throw new Error("event stream: " + r.status);
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trim());
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

function cell(text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text == null ? "" : text;
  return td;
}

function matches(job) {
  const status = $("#filter-status").value;
  const engine = $("#filter-engine").value;
  const voice = $("#filter-voice").value.trim();
  const tenant = $("#filter-tenant").value.trim();
  if (status && job.status !== status) return false;
  if (tenant && job.tenant_id !== tenant) return false;
  if (engine && job.engine !== engine) return false;
  if (voice && job.voice !== voice && job.voice_id !== voice) return false;
  return true;
}

function render(job) {
  const tbody = $("#jobs tbody");
  let row = tbody.querySelector('tr[data-job-id="' + job.id + '"]');
  if (!matches(job)) { if (row) row.remove(); return; }
  if (!row) {
    row = document.createElement("tr");
    row.dataset.jobId = job.id;
    row.dataset.tenantId = job.tenant_id;
    row.title = "tenant " + job.tenant_id;
    row.append(cell(new Date(job.created_at).toLocaleTimeString()), cell(job.id, "id"),
      cell(""), cell("", "status"), cell(""), cell("", "result"));
    // Newest first, by created_at.
    const after = [...tbody.rows].find((r) => jobs.get(r.dataset.jobId).created_at < job.created_at);
    tbody.insertBefore(row, after || null);
  }
  row.dataset.status = job.status;
  row.cells[2].textContent = job.engine + " / " + (job.voice_id || job.voice || "default");
  const st = row.cells[3];
  st.textContent = job.status;
  st.className = "status status-" + job.status;
  const p = job.progress;
  row.cells[4].replaceChildren();
  if (p.segments_total) {
    const bar = document.createElement("progress");
    bar.max = p.segments_total;
    bar.value = p.segments_done;
    row.cells[4].append(bar, " " + p.segments_done + "/" + p.segments_total);
  }
  const result = row.cells[5];
  if (job.status === "succeeded" && !result.querySelector("audio")) {
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.preload = "none";
    audio.dataset.audioUrl = location.origin + "/v1/jobs/" + job.id + "/audio";
    result.replaceChildren(audio);
    loadAudio(audio);
  } else if (job.error && !result.querySelector(".error")) {
    const span = document.createElement("span");
    span.className = "error";
    span.textContent = job.error.code + ": " + job.error.message;
    result.replaceChildren(span);
  }
}

// <audio src> cannot send the key: fetch the file with it and play it from a blob: URL.
async function loadAudio(audio) {
  try {
    const r = await fetch(audio.dataset.audioUrl, { headers: headers() });
    if (!r.ok) throw new Error("audio: " + r.status);
    audio.src = URL.createObjectURL(await r.blob());
    audio.dataset.loaded = "true";
  } catch (e) {
    audio.dataset.loaded = "false";
    audio.title = String(e.message || e);
  }
}

function update(job) {
  const old = jobs.get(job.id);
  if (old && old.status === job.status && old.progress.segments_done === job.progress.segments_done
      && !(job.result && !old.result)) return;
  jobs.set(job.id, Object.assign({}, old || {}, job));
  render(jobs.get(job.id));
}

function rerender() {
  $("#jobs tbody").replaceChildren();
  [...jobs.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1)).forEach(render);
}

// The tenant filter once it holds a whole tenant id (the API takes only those); "" until then.
function tenantId() {
  const tenant = $("#filter-tenant").value.trim();
  return /^[0-9a-f-]{36}$/i.test(tenant) ? tenant : "";
}

async function loadJobs() {
  const status = $("#filter-status").value;
  const tenant = tenantId();
  const page = await api("/v1/jobs?limit=100" + (status ? "&status=" + status : "")
    + (tenant ? "&tenant_id=" + tenant : ""));
  page.items.forEach(update);
  rerender();
}

function watchList() {
  if (listStream) listStream.abort();
  listStream = new AbortController();
  const state = $("#stream-state");
  state.textContent = "live";
  const ctl = listStream;
  readEvents("/v1/jobs/events", ctl.signal, (name, data) => { if (name === "job") update(data); })
    .catch(() => {})
    .finally(() => {
      if (ctl.signal.aborted) return;
      state.textContent = "reconnecting";
      setTimeout(watchList, 2000);
    });
}

// One job's own stream: status and progress until it ends (the list stream covers it too).
function watchJob(id) {
  if (streams.has(id)) return;
  const ctl = new AbortController();
  streams.set(id, ctl);
  readEvents("/v1/jobs/" + id + "/events", ctl.signal, (name, data) => {
    if (name === "status") update(data);
    else if (name === "progress") {
      const job = jobs.get(id);
      if (job) update(Object.assign({}, job, { status: data.status, progress: data.progress }));
    }
  }).catch(() => {}).finally(() => streams.delete(id));
}

async function loadEngines() {
  const engines = await api("/v1/engines");
  const select = $("#job-engine");
  const filter = $("#filter-engine");
  select.replaceChildren();
  filter.replaceChildren(new Option("any", ""));
  for (const e of engines) {
    select.append(new Option(e.name + (e.default ? " (default)" : ""), e.name, e.default, e.default));
    filter.append(new Option(e.name, e.name));
  }
  const showVoices = () => {
    const e = engines.find((x) => x.name === select.value);
    $("#engine-voices").replaceChildren(...((e && e.voices) || []).map((v) => new Option(v)));
  };
  select.onchange = showVoices;
  showVoices();
}

async function loadVoices() {
  const page = await api("/v1/voices?limit=200");
  const tbody = $("#voices tbody");
  const pick = $("#job-voice-id");
  tbody.replaceChildren();
  pick.replaceChildren(new Option("none", ""));
  for (const v of page.items) {
    const row = document.createElement("tr");
    row.dataset.voiceId = v.id;
    row.append(cell(v.name), cell(v.id, "id"), cell(v.status, "status status-" + v.status),
      cell(v.language), cell(v.duration_s == null ? "" : v.duration_s.toFixed(1) + " s"),
      cell(v.error ? v.error.code + ": " + v.error.message : "", "error"));
    tbody.append(row);
    if (v.status === "ready") pick.append(new Option(v.name, v.id));
  }
}

async function submitJob(ev) {
  ev.preventDefault();
  const body = { text: $("#job-text").value, engine: $("#job-engine").value, format: $("#job-format").value };
  const optional = { voice: "#job-voice", voice_id: "#job-voice-id", mode: "#job-mode", instruction: "#job-instruction" };
  for (const [field, sel] of Object.entries(optional)) {
    const value = $(sel).value.trim();
    if (value) body[field] = value;
  }
  try {
    const job = await api("/v1/jobs", {
      method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" },
    });
    show("Submitted job " + job.id, true);
    update(job);
    watchJob(job.id);
  } catch (e) {
    show(e.message);
  }
}

async function submitVoice(ev) {
  ev.preventDefault();
  const form = new FormData();
  form.append("name", $("#voice-name").value);
  form.append("transcript", $("#voice-transcript").value);
  if ($("#voice-language").value.trim()) form.append("language", $("#voice-language").value.trim());
  form.append("audio", $("#voice-file").files[0]);
  try {
    const voice = await api("/v1/voices", { method: "POST", body: form });
    show("Uploaded voice " + voice.name + " (" + voice.status + ")", true);
    await loadVoices();
  } catch (e) {
    show(e.message);
  }
}

function route() {
  const voices = location.hash === "#voices";
  $("#page-jobs").hidden = voices;
  $("#page-voices").hidden = !voices;
  $("#nav-jobs").classList.toggle("active", !voices);
  $("#nav-voices").classList.toggle("active", voices);
  if (voices) loadVoices().catch((e) => show(e.message));
}

async function start() {
  show("");
  $("#key-state").textContent = apiKey() ? "key saved" : "no key";
  try {
    await Promise.all([loadEngines(), loadJobs(), loadVoices()]);
    watchList();
  } catch (e) {
    show(e.message + (apiKey() ? "" : " (enter an API key)"));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#api-key").value = apiKey();
  $("#key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    localStorage.setItem(KEY, $("#api-key").value.trim());
    start();
  });
  $("#job-form").addEventListener("submit", submitJob);
  $("#voice-form").addEventListener("submit", submitVoice);
  $("#filter-status").addEventListener("change", () => loadJobs().catch((e) => show(e.message)));
  $("#filter-engine").addEventListener("change", rerender);
  $("#filter-voice").addEventListener("input", rerender);
  // Rows already shown are filtered at once; a complete tenant id also reloads the first page.
  $("#filter-tenant").addEventListener("input", () => {
    rerender();
    if (tenantId()) loadJobs().catch((e) => show(e.message));
  });
  window.addEventListener("hashchange", route);
  route();
  start();
});
