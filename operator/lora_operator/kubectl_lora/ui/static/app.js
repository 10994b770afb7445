// The dashboard's page scripts: live updates from the server's event stream (a Kubernetes watch),
// the loss chart (uPlot), the preview viewer and the job actions. No build step.
"use strict";

let JOB = null;
let chart = null;

function showMessage(text, isError) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = "banner " + (isError ? "error" : "ok");
  box.hidden = false;
}

function listen(onChange) {
  const live = document.getElementById("live");
  const source = new EventSource("/events");
  source.onopen = () => live.classList.add("on");
  source.onerror = () => live.classList.remove("on");
  source.onmessage = (e) => onChange(JSON.parse(e.data).name);
}

function debounced(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}

async function replace(url, id) {
  const response = await fetch(url);
  if (response.ok) document.getElementById(id).innerHTML = await response.text();
}

function liveJobs() {
  const refresh = debounced(() => replace("/fragments/jobs", "jobs-rows"), 200);
  listen(refresh);
}

function liveJob(name) {
  JOB = name;
  const base = "/jobs/" + encodeURIComponent(name);
  const refresh = debounced(async () => {
    const picks = checkedEpochs();
    await replace(base + "/fragment", "job-live");
    document.querySelectorAll(".compare-pick").forEach((box) => { box.checked = picks.includes(box.value); });
    pickChanged();
    drawLoss();
  }, 200);
  listen((changed) => { if (changed === name || changed === "") refresh(); });
  drawLoss();
}

async function drawLoss() {
  const response = await fetch("/jobs/" + encodeURIComponent(JOB) + "/loss");
  if (!response.ok) return;
  const series = await response.json();
  const steps = [...new Set([...series.training, ...series.validation].map((p) => p[0]))].sort((a, b) => a - b);
  const at = (points) => { const m = new Map(points); return steps.map((s) => (m.has(s) ? m.get(s) : null)); };
  const data = [steps, at(series.training), at(series.validation)];
  const el = document.getElementById("loss-chart");
  el.dataset.points = String(series.training.length + series.validation.length);
  if (chart) { chart.setData(data); return; }
  chart = new uPlot({
    width: Math.min(el.clientWidth || 800, 900), height: 240,
    scales: { x: { time: false } },
    axes: [{ label: "step" }, { label: "loss" }],
    series: [
      { label: "step" },
      { label: "training loss", stroke: "#2b6cb0", spanGaps: true, points: { show: true, size: 4 } },
      { label: "validation loss (per epoch)", stroke: "#c53030", spanGaps: true, points: { show: true, size: 8 } },
    ],
  }, data, el);
}

async function act(action, question, body) {
  if (question && !window.confirm(question)) return;
  const response = await fetch("/jobs/" + encodeURIComponent(JOB) + "/" + action, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body || {}),
  });
  const answer = await response.json();
  showMessage(answer.message || answer.error, !response.ok);
}

function pick(checkpoint, finished) {
  const when = finished ? "" : " once the job has ended";
  act("select", `Pick ${checkpoint} for ${JOB}? The operator copies it to final/${when}.`, { checkpoint });
}

function enlarge(img) {
  const body = document.getElementById("viewer-body");
  body.innerHTML = "";
  const big = img.cloneNode();
  big.className = "large";
  big.onclick = null;
  const caption = document.createElement("p");
  caption.textContent = img.alt;
  body.append(big, caption);
  document.getElementById("viewer").showModal();
}

function checkedEpochs() {
  return [...document.querySelectorAll(".compare-pick:checked")].map((box) => box.value);
}

function pickChanged() {
  const button = document.getElementById("compare");
  if (button) button.disabled = checkedEpochs().length !== 2;
}

function compareEpochs() {
  const body = document.getElementById("viewer-body");
  body.innerHTML = "";
  const row = document.createElement("div");
  row.className = "compare";
  for (const epoch of checkedEpochs()) {
    const column = document.querySelector(`figure.epoch[data-epoch="${epoch}"]`).cloneNode(true);
    column.querySelectorAll("input").forEach((box) => box.remove());
    column.querySelectorAll("img").forEach((im) => { im.className = "large"; im.onclick = null; });
    row.append(column);
  }
  body.append(row);
  document.getElementById("viewer").showModal();
}

// A form's fields as JSON to `url`; on success the page goes where the answer says.
async function submitForm(url, form) {
  const fields = Object.fromEntries(new FormData(form).entries());
  const response = await fetch(url, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(fields),
  });
  const answer = await response.json();
  showMessage(answer.message || answer.error, !response.ok);
  if (response.ok) window.location.href = answer.url;
}

function createJob(form) {
  return submitForm("/new", form);
}

async function uploadFolder(step) {
  // Streams each file of the chosen folder to /upload/<session>/files/<path> (skipping those the
  // session already has: a retry resumes), then runs `lora-train upload` (step: check or send).
  const files = Array.from(document.getElementById("folder").files);
  const report = document.getElementById("dataset-report");
  const folder = files.length ? files[0].webkitRelativePath.split("/")[0] : "";
  const key = "upload:" + folder;
  let session = sessionStorage.getItem(key);
  if (!session) {
    session = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem(key, session);
  }
  const have = (await (await fetch("/upload/" + session)).json()).files || {};
  let sent = 0;
  for (const file of files) {
    const path = file.webkitRelativePath.split("/").slice(1).join("/") || file.name;
    if (have[path] === file.size) continue;
    const response = await fetch("/upload/" + session + "/files/" + path.split("/").map(encodeURIComponent).join("/"),
                                 { method: "PUT", body: file });
    if (!response.ok) { showMessage((await response.json()).error, true); return; }
    report.textContent = "sent " + (++sent) + " file(s) to the dashboard";
  }
  const response = await fetch("/upload/" + session + "/" + step, {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ uri: document.getElementById("datasetUri").value, folder: folder }),
  });
  const answer = await response.json();
  report.textContent = answer.report || "";
  showMessage(answer.error || (step === "send" ? "uploaded to " + answer.uri : "the folder is usable"), !response.ok);
  if (response.ok && step === "send") sessionStorage.removeItem(key);
}

function retrain(form) {
  return submitForm("/jobs/" + encodeURIComponent(JOB) + "/retrain", form);
}
