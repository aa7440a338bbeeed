// The playground: a form built from the running gateway's request schema, an async job,
// its progress, and its images. Everything it sends is the public API.
"use strict";

const SKIP = new Set(["image", "base64", "webhook"]);
const $ = (id) => document.getElementById(id);
let schema = {};
let imageData = null; // base64 of the picked file (no data: prefix)
let current = null; // the job being watched
let timer = null;

function apiKey() { return $("api-key").value.trim(); }

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (apiKey()) h["Authorization"] = "Bearer " + apiKey();
  return h;
}

function fieldInput(name, spec) {
  const label = document.createElement("label");
  const types = [].concat(spec.type);
  let input;
  const choices = (spec.enum || []).filter((v) => v !== null);
  if (choices.length) {
    input = document.createElement("select");
    for (const value of choices) {
      const option = document.createElement("option");
      option.value = option.textContent = String(value);
      input.appendChild(option);
    }
  } else if (types.includes("boolean")) {
    input = document.createElement("input");
    input.type = "checkbox";
  } else if (name.endsWith("prompt")) {
    input = document.createElement("textarea");
    input.rows = 2;
  } else {
    input = document.createElement("input");
    input.type = types.includes("integer") || types.includes("number") ? "number" : "text";
    if (spec.minimum !== undefined) input.min = spec.minimum;
    if (spec.maximum !== undefined) input.max = spec.maximum;
    input.step = types.includes("integer") ? "1" : "any";
  }
  input.id = "field-" + name;
  input.name = name;
  if (spec.default !== undefined && spec.default !== null) {
    if (input.type === "checkbox") input.checked = Boolean(spec.default);
    else input.value = String(spec.default);
  }
  const range = spec.minimum !== undefined ? ` (${spec.minimum} to ${spec.maximum})` : "";
  label.innerHTML = `${name} <span class="hint">${spec.description || ""}${range}</span>`;
  label.appendChild(input);
  return label;
}

async function loadSchema() {
  const document_ = await (await fetch("/openapi.json")).json();
  schema = document_.components.schemas.Img2ImgRequest.properties;
  const box = $("fields");
  box.innerHTML = "";
  for (const [name, spec] of Object.entries(schema)) {
    if (!SKIP.has(name)) box.appendChild(fieldInput(name, spec));
  }
}

function body() {
  const out = { image: imageData || $("image-url").value.trim() };
  for (const [name, spec] of Object.entries(schema)) {
    if (SKIP.has(name)) continue;
    const input = $("field-" + name);
    const types = [].concat(spec.type);
    if (input.type === "checkbox") out[name] = input.checked;
    else if (input.value === "") continue;
    else if (types.includes("integer")) out[name] = Number.parseInt(input.value, 10);
    else if (types.includes("number")) out[name] = Number.parseFloat(input.value);
    else out[name] = input.value;
  }
  out.base64 = false;
  return out;
}

function showError(text) { $("error").textContent = text; }

async function errorText(response) {
  try {
    const data = await response.json();
    return typeof data.error === "string" ? data.error : JSON.stringify(data);
  } catch (_) {
    return `HTTP ${response.status}`;
  }
}

async function submit(event) {
  event.preventDefault();
  showError("");
  $("gallery").innerHTML = "";
  const request = body();
  if (!request.image) { showError("image: pick a file or give a URL"); return; }
  const response = await fetch("/v1/sd1.5-img2img", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", "Prefer": "respond-async" }),
    body: JSON.stringify(request),
  });
  if (!response.ok) { showError(await errorText(response)); return; }
  current = await response.json();
  localStorage.setItem("img2img-api-key", apiKey());
  $("cancel").disabled = false;
  watch();
}

function render(job) {
  const progress = job.progress || { step: 0, total: 0 };
  $("progress").max = Math.max(progress.total, 1);
  $("progress").value = job.status === "succeeded" ? $("progress").max : progress.step;
  let text = `job ${job.id}: ${job.status}`;
  if (job.status === "queued") {
    text += `, ${job.queue_position ?? 0} ahead` + (job.eta_seconds != null ? `, about ${job.eta_seconds} s` : "");
  } else if (job.status === "running") {
    text += `, step ${progress.step} of ${progress.total}`;
  }
  $("state").textContent = text;
  if (job.error) showError(job.error);
}

async function watch() {
  clearTimeout(timer);
  const response = await fetch(`/v1/jobs/${current.id}`, { headers: headers() });
  if (!response.ok) { showError(await errorText(response)); return; }
  const job = await response.json();
  render(job);
  if (["succeeded", "failed", "canceled"].includes(job.status)) {
    $("cancel").disabled = true;
    if (job.status === "succeeded") await gallery(job);
    return;
  }
  timer = setTimeout(watch, 250);
}

async function gallery(job) {
  const box = $("gallery");
  box.innerHTML = "";
  for (const [index, url] of job.outputs.entries()) {
    const response = await fetch(url, { headers: headers() });
    const blob = await response.blob();
    const link = URL.createObjectURL(blob);
    const extension = (blob.type.split("/")[1] || "jpg").replace("jpeg", "jpg");
    const figure = document.createElement("figure");
    figure.innerHTML = `<img alt="output ${index}" src="${link}"><figcaption>seed <span class="seed">${job.seeds[index]}</span>` +
      ` &middot; <a download="${job.id}-${index}.${extension}" href="${link}">download</a></figcaption>`;
    box.appendChild(figure);
  }
}

async function cancel() {
  if (!current) return;
  const response = await fetch(`/v1/jobs/${current.id}/cancel`, { method: "POST", headers: headers() });
  if (!response.ok && response.status !== 409) showError(await errorText(response));
  watch();
}

function snippet(kind) {
  const request = body();
  const url = location.origin + "/v1/sd1.5-img2img";
  const json = JSON.stringify(request);
  const key = apiKey() ? apiKey() : "YOUR_API_KEY";
  const text = kind === "curl"
    ? `curl -s ${url} -H 'Content-Type: application/json' -H 'Authorization: Bearer ${key}' -o out.jpg -d '${json.replace(/'/g, "'\\''")}'`
    : `import requests\n\nbody = ${json}\nreply = requests.post("${url}", json=body, headers={"Authorization": "Bearer ${key}"}, timeout=300)\nreply.raise_for_status()\nopen("out.jpg", "wb").write(reply.content)\n`;
  $("snippet").hidden = false;
  $("snippet").value = text;
  if (navigator.clipboard) navigator.clipboard.writeText(text).catch(() => {});
}

function pick(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    imageData = String(reader.result).split(",", 2)[1];
    $("preview").src = reader.result;
    $("preview").hidden = false;
  };
  reader.readAsDataURL(file);
}

function init() {
  $("api-key").value = localStorage.getItem("img2img-api-key") || "";
  $("api-key").addEventListener("change", () => localStorage.setItem("img2img-api-key", apiKey()));
  $("image-file").addEventListener("change", (e) => pick(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); pick(e.dataTransfer.files[0]); });
  $("image-url").addEventListener("input", () => { if ($("image-url").value) { imageData = null; $("preview").hidden = true; } });
  $("request").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  $("copy-curl").addEventListener("click", () => snippet("curl"));
  $("copy-python").addEventListener("click", () => snippet("python"));
  loadSchema().catch((err) => showError("could not read /openapi.json: " + err));
}

init();
