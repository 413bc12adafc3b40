// The page of `pcsr serve`: upload, route, follow long jobs, compare, download.
// Plain JavaScript, no build step. The server does every computation; this file only asks and shows.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  image: null,        // the upload as the server describes it
  localUrl: null,     // the picked file, for the "nearest" before view
  result: null,       // the result shown
  busy: false,        // one request in flight: a slider moved meanwhile asks again when it ends
  again: false,
  generation: 0,      // a new picture or model makes older answers stale
};

// ------------------------------------------------------------------ figures, as the command prints them
function human(n) {
  for (const [unit, size] of [["T", 1e12], ["G", 1e9], ["M", 1e6], ["K", 1e3]]) {
    if (n >= size) return (n / size).toFixed(1) + unit;
  }
  return String(n);
}

function readout(r) {
  const share = r.max_flops ? (100 * r.flops / r.max_flops) : 100;
  const lines = [
    `${r.width}x${r.height}  flops: ${human(r.flops)} (${share.toFixed(1)} %) | max_flops: ${human(r.max_flops)} (100 %)`,
  ];
  const heavy = r.heavy_fraction === null || r.heavy_fraction === undefined ? "n/a"
    : (100 * r.heavy_fraction).toFixed(1) + " %";
  lines.push(`heavy pixels: ${heavy}  time: ${r.seconds.toFixed(3)} s  (${r.kind === "preview" ? "live re-route" : "full run"})`);
  return lines.join("\n");
}

// ------------------------------------------------------------------ messages
function status(text) { $("status").textContent = text; }
function showError(text) {
  const e = $("error");
  e.textContent = text || "";
  e.hidden = !text;
}
function progress(job) {
  const bar = $("progress");
  if (!job || job.state === "done" || job.state === "failed") { bar.hidden = true; return; }
  bar.hidden = false;
  if (job.state === "queued") {
    bar.removeAttribute("value");
    status(job.position > 0 ? `waiting: ${job.position} job(s) ahead` : "waiting for the model");
  } else if (job.total > 0) {
    bar.max = job.total; bar.value = job.done;
    status(`running: tile ${job.done} of ${job.total}`);
  } else {
    bar.removeAttribute("value");
    status("running the network");
  }
}

async function answer(response) {
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  if (!response.ok && response.status !== 202) {
    throw new Error((body && body.error) || `the server answered ${response.status}`);
  }
  return body;
}

// ------------------------------------------------------------------ jobs
function routing() {
  const budget = $("use-budget").checked;
  return {
    k: Number($("k").value),
    adaptive: $("adaptive").checked,
    budget: budget ? Number($("budget").value) : null,
    refine: $("refine").checked,
  };
}

function follow(job) {
  // a job that did not end within the POST's wait: its changes as server-sent events
  return new Promise((resolve, reject) => {
    const events = new EventSource(`/api/jobs/${job.id}/events`);
    events.onmessage = (msg) => {
      const j = JSON.parse(msg.data);
      progress(j);
      if (j.state === "done" || j.state === "failed") { events.close(); resolve(j); }
    };
    events.onerror = () => { events.close(); reject(new Error("lost the connection to the server")); };
  });
}

async function runJob(exact) {
  const body = { image: state.image.id, model: $("model").value, ...routing(), exact, wait: 1.0 };
  let job = await answer(await fetch("/api/jobs", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }));
  progress(job);
  if (job.state !== "done" && job.state !== "failed") job = await follow(job);
  progress(null);
  if (job.state === "failed") throw new Error(job.error);
  return job.result;
}

function loaded(img, url) {
  return new Promise((resolve, reject) => {
    img.onload = () => resolve();
    img.onerror = () => reject(new Error("the picture did not load"));
    img.src = url;
  });
}

async function show(r) {
  await loaded($("after"), r.view);
  const overlay = $("overlay");
  if (r.overlay) { await loaded(overlay, r.overlay); }
  overlay.hidden = !(r.overlay && $("overlay-toggle").checked);
  state.result = r;
  $("readout").textContent = readout(r);
  $("compare").hidden = false;
  $("download").disabled = false;
  $("download-classes").disabled = !r.classmap;
  $("overlay-toggle").disabled = !r.overlay;
  status(r.kind === "preview" ? "Live view. Downloads run the full model." : "Done.");
}

async function reroute() {
  if (!state.image) return;
  if (state.busy) { state.again = true; return; }
  state.busy = true;
  const generation = state.generation;
  try {
    showError("");
    const r = await runJob(false);
    if (generation === state.generation) await show(r);
  } catch (err) {
    progress(null);
    showError(err.message);
  } finally {
    state.busy = false;
    if (state.again) { state.again = false; reroute(); }
  }
}

// ------------------------------------------------------------------ pictures
async function setBefore() {
  if (!state.image) return;
  const compare = $("compare");
  const nearest = $("before-kind").value === "nearest";
  compare.classList.toggle("nearest", nearest);
  const url = nearest ? state.localUrl
    : `/api/images/${state.image.id}/bicubic?model=${encodeURIComponent($("model").value)}`;
  try {
    await loaded($("before"), url);
    $("before").alt = nearest ? "before (nearest)" : "before (bicubic)";
  } catch (err) {  // too large for a bicubic view: the picture enlarged as it is
    compare.classList.add("nearest");
    await loaded($("before"), state.localUrl);
  }
}

async function upload(file) {
  if (!file) return;
  state.generation += 1;
  showError("");
  status(`uploading ${file.name || "the picture"}…`);
  $("progress").hidden = false;
  $("progress").removeAttribute("value");
  const form = new FormData();
  form.append("image", file, file.name || "pasted.png");
  try {
    state.image = await answer(await fetch("/api/images", { method: "POST", body: form }));
  } catch (err) {
    state.image = null;
    $("progress").hidden = true;
    status("No picture.");
    showError(err.message);
    return;
  }
  if (state.localUrl) URL.revokeObjectURL(state.localUrl);
  state.localUrl = URL.createObjectURL(file);
  $("drop-text").textContent = `${state.image.name}: ${state.image.width}x${state.image.height}`;
  if (state.image.notes.length) showError(state.image.notes.join(" "));
  await setBefore();
  await reroute();
}

// ------------------------------------------------------------------ downloads: always the full run
async function download(what) {
  if (!state.result) return;
  const button = $(what === "file" ? "download" : "download-classes");
  button.disabled = true;
  try {
    showError("");
    let r = state.result;
    if (r.kind !== "exact") { status("running the full model for the download…"); r = await runJob(true); }
    const saver = $("saver");
    saver.href = (what === "file" ? r.file : r.classmap) + "?download";
    saver.download = what === "file" ? r.download : r.classmap_download;
    saver.click();
    status(`Saved ${saver.download}: the file pcsr upscale writes.`);
  } catch (err) {
    progress(null);
    showError(err.message);
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ wiring
async function init() {
  try {
    const info = await answer(await fetch("/api/models"));
    for (const m of info.models) {
      const o = document.createElement("option");
      o.value = m.name;
      o.textContent = `${m.name} (x${m.scale}, ${m.pcsr ? m.classes + " classes" : "no classes"}, ${m.precision})`;
      $("model").appendChild(o);
    }
    $("model").value = info.default;
  } catch (err) {
    showError(err.message);
  }
  const drop = $("drop");
  $("file").addEventListener("change", (e) => upload(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData ? e.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
    if (file) upload(file);
  });
  $("k").addEventListener("input", () => { $("k-value").textContent = Number($("k").value).toFixed(2); reroute(); });
  $("adaptive").addEventListener("change", () => {
    if ($("adaptive").checked) { $("use-budget").checked = false; $("budget").disabled = true; }
    $("k").disabled = $("adaptive").checked || $("use-budget").checked;
    reroute();
  });
  $("use-budget").addEventListener("change", () => {
    if ($("use-budget").checked) $("adaptive").checked = false;
    $("budget").disabled = !$("use-budget").checked;
    $("k").disabled = $("adaptive").checked || $("use-budget").checked;
    reroute();
  });
  $("budget").addEventListener("input", () => {
    $("budget-value").textContent = Math.round(100 * Number($("budget").value)) + " %";
    reroute();
  });
  $("refine").addEventListener("change", reroute);
  $("model").addEventListener("change", () => { state.generation += 1; setBefore(); reroute(); });
  $("before-kind").addEventListener("change", setBefore);
  $("overlay-toggle").addEventListener("change", () => {
    $("overlay").hidden = !($("overlay-toggle").checked && state.result && state.result.overlay);
  });
  $("overlay-opacity").addEventListener("input", () => { $("overlay").style.opacity = $("overlay-opacity").value; });
  $("overlay").style.opacity = $("overlay-opacity").value;
  $("split").addEventListener("input", () => {
    $("after-wrap").style.clipPath = `inset(0 0 0 ${$("split").value}%)`;
  });
  $("download").addEventListener("click", () => download("file"));
  $("download-classes").addEventListener("click", () => download("classmap"));
}

init();
