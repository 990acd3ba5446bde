// The try-it page: choose a model, send a text or an image, show the label and the top-k probabilities as bars.
// Everything comes from this server; a token (when the server needs one) is kept in sessionStorage.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "xfer-serve-token";
let models = [];

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: "Bearer " + token } : {};
}

async function call(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (response.status === 401) $("auth").hidden = false;
  if (!response.ok) throw new Error((body && body.error) || ("HTTP " + response.status));
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function current() {
  return models.find((m) => m.name === $("model").value);
}

function showModel() {
  const m = current();
  if (!m) return;
  $("text-input").hidden = m.modality !== "text";
  $("image-input").hidden = m.modality !== "image";
  const metrics = Object.entries(m.metrics || {}).map(([k, v]) => `${k} ${(100 * v).toFixed(1)}%`).join(", ");
  $("model-info").textContent = `${m.modality} model, labels: ${m.labels.join(", ")}` + (metrics ? `; ${metrics}` : "");
  $("report").hidden = !m.report;
  if (m.report) $("report").href = m.report;
  $("label").hidden = true;
  $("bars").replaceChildren();
  showError("");
}

function showPrediction(p) {
  $("label").textContent = `${p.label} (${(100 * p.confidence).toFixed(1)}%)`;
  $("label").hidden = false;
  const rows = (p.top_k || [{ label: p.label, probability: p.confidence }]).map((t) => {
    const row = document.createElement("div");
    row.className = "bar";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = t.label;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${(100 * t.probability).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(100 * t.probability).toFixed(1)}%`;
    row.append(name, track, value);
    return row;
  });
  $("bars").replaceChildren(...rows);
}

async function predict(request, button) {
  showError("");
  if (button) button.disabled = true;
  try {
    const body = await call("/predict", request);
    showPrediction(body.predictions[0]);
  } catch (e) {
    $("label").hidden = true;
    $("bars").replaceChildren();
    showError(e.message);
  } finally {
    if (button) button.disabled = false;
  }
}

function predictText() {
  const text = $("text").value;
  if (!text.trim()) return showError("Type some text first.");
  predict({ method: "POST", headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ model: current().name, inputs: [text] }) }, $("predict-text"));
}

function predictImage(file) {
  if (!file) return;
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  const form = new FormData();
  form.append("model", current().name);
  form.append("files", file, file.name);
  predict({ method: "POST", body: form });
}

async function openReport(event) {
  if (!sessionStorage.getItem(TOKEN_KEY)) return; // a plain link works without a token
  event.preventDefault();
  const response = await fetch(current().report, { headers: authHeaders() });
  if (!response.ok) return showError("The report could not be read (HTTP " + response.status + ").");
  window.open(URL.createObjectURL(await response.blob()), "_blank", "noopener");
}

async function loadModels() {
  try {
    models = (await call("/models")).models;
  } catch (e) {
    return showError(e.message);
  }
  $("model").replaceChildren(...models.map((m) => new Option(`${m.name} (${m.modality})`, m.name)));
  showModel();
}

async function start() {
  try {
    const health = await (await fetch("/health")).json();
    $("auth").hidden = !health.auth;
  } catch (e) { /* /models will say what is wrong */ }
  $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("save-token").addEventListener("click", () => {
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    loadModels();
  });
  $("model").addEventListener("change", showModel);
  $("predict-text").addEventListener("click", predictText);
  $("text").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) predictText(); });
  $("file").addEventListener("change", () => predictImage($("file").files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    predictImage(e.dataTransfer.files[0]);
  });
  $("report").addEventListener("click", openReport);
  await loadModels();
}

start();
