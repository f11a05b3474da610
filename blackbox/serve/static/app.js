// The explorer page: talks to the JSON API of blackbox serve (see blackbox/serve/app.py).
// Plain DOM code, no framework and nothing fetched from elsewhere; all text goes in through textContent.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const POLL_MS = 250;

const state = {
  info: null,
  image: null,      // {id, name, width, height}
  target: null,     // class index being explained
  grid: null,       // geometry of the activation grid on screen
  layer: "",
};

// ------------------------------------------------------------------ talking to the server

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  }
  return data;
}

function postJSON(path, body) {
  return api(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
}

function setStatus(text, isError = false) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// ------------------------------------------------------------------ jobs shown in a panel

// A panel shows one job at a time: progress with a cancel button while it runs, then its picture.
class JobPanel {
  constructor(root, imgSelector) {
    this.root = root;
    this.img = $(imgSelector, root);
    this.job = $(".job", root);
    this.bar = $("progress", this.job);
    this.text = $(".job-text", this.job);
    this.facts = $(".facts", root);
    this.notes = $(".notes", root);
    this.jobId = null;
    this.token = 0;
    $(".cancel", this.job).addEventListener("click", () => this.cancel());
  }

  reset() {
    this.token += 1;
    this.jobId = null;
    this.job.hidden = true;
    this.img.hidden = true;
    this.img.removeAttribute("src");
    this.facts.textContent = "";
    if (this.notes) this.notes.replaceChildren();
  }

  async cancel() {
    if (this.jobId === null) return;
    try {
      await api(`/api/jobs/${this.jobId}/cancel`, {method: "POST"});
    } catch (error) {
      setStatus(error.message, true);
    }
  }

  // start: a function returning the job JSON of a POST; describe(result) -> the facts line.
  async run(start, describe) {
    const token = ++this.token;
    const previous = this.jobId;
    if (previous !== null && !otherPanelWatches(this, previous)) {
      api(`/api/jobs/${previous}/cancel`, {method: "POST"}).catch(() => {});
    }
    this.jobId = null;
    this.root.hidden = false;
    this.img.hidden = true;
    this.facts.textContent = "";
    if (this.notes) this.notes.replaceChildren();
    this.facts.classList.remove("error-text");
    this.root.dataset.state = "running";
    this.showProgress({status: "queued", progress: 0});
    let job;
    try {
      job = await start();
    } catch (error) {
      if (token === this.token) this.fail(error.message);
      return;
    }
    this.jobId = job.id;
    while (token === this.token && (job.status === "queued" || job.status === "running")) {
      this.showProgress(job);
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      try {
        job = await api(`/api/jobs/${job.id}`);
      } catch (error) {
        if (token === this.token) this.fail(error.message);
        return;
      }
    }
    if (token !== this.token) return;
    if (job.status === "done") {
      await this.show(job, describe);
    } else if (job.status === "cancelled") {
      this.job.hidden = true;
      this.facts.textContent = "Cancelled.";
    } else {
      this.fail(job.error || "the job failed");
    }
  }

  showProgress(job) {
    this.job.hidden = false;
    if (job.status === "running" && job.progress > 0) {
      this.bar.value = job.progress;
      this.text.textContent = `${Math.round(job.progress * 100)} %`;
    } else {
      this.bar.removeAttribute("value");  // indeterminate: no bar for this kind of work, or still queued
      this.text.textContent = job.status === "queued" ? "waiting…" : "computing…";
    }
  }

  async show(job, describe) {
    const loaded = new Promise((resolve, reject) => {
      this.img.onload = resolve;
      this.img.onerror = () => reject(new Error("the picture did not load"));
    });
    this.img.dataset.job = job.id;
    this.img.src = job.png;
    try {
      await loaded;
    } catch (error) {
      this.fail(error.message);
      return;
    }
    this.job.hidden = true;
    this.img.hidden = false;
    this.facts.textContent = describe(job.result, job);
    if (this.notes) {
      const items = (job.result.notes || []).map((note) => {
        const li = document.createElement("li");
        li.textContent = note;
        return li;
      });
      this.notes.replaceChildren(...items);
    }
    this.root.dataset.state = "done";
  }

  fail(message) {
    this.job.hidden = true;
    this.facts.textContent = message;
    this.facts.classList.add("error-text");
    this.root.dataset.state = "failed";
    setStatus(message, true);
  }
}

const panels = {};

function otherPanelWatches(panel, jobId) {
  return Object.values(panels).some((other) => other !== panel && other.jobId === jobId);
}

// ------------------------------------------------------------------ the picture

async function openUpload(file) {
  if (!file) return;
  setStatus(`uploading ${file.name}…`);
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    setImage(await api("/api/images", {method: "POST", body: form}));
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function openFolderFile(name) {
  if (!name) return;
  setStatus(`opening ${name}…`);
  try {
    setImage(await postJSON("/api/folder/open", {name}));
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function setImage(entry) {
  state.image = entry;
  state.target = null;
  $("#picture").src = `/api/images/${entry.id}/picture`;
  $("#picture-name").textContent = `${entry.name} (${entry.width} × ${entry.height})`;
  $("#picture-figure").hidden = false;
  for (const key of ["a", "b"]) {
    panels[key].reset();
    panels[key].root.hidden = true;
  }
  $("#explain-empty").hidden = false;
  $("#explain-empty").textContent = "Click one of the classes to explain it.";
  $("#target-text").textContent = "";
  setStatus("finding the top classes…");
  try {
    const top = await api(`/api/images/${entry.id}/top?k=5`);
    if (state.image !== entry) return;
    showClasses(top.classes);
    setStatus("");
  } catch (error) {
    setStatus(error.message, true);
  }
  if (state.layer) loadGrid();
}

function showClasses(classes) {
  const list = $("#classes");
  const items = classes.map((item) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "class";
    button.dataset.index = item.index;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = item.label;
    const probability = document.createElement("span");
    probability.className = "probability";
    probability.textContent = item.probability === null ? "?" : `${(item.probability * 100).toFixed(1)} %`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(0, Math.min(1, item.probability || 0)) * 100}%`;
    button.append(label, probability, bar);
    button.title = `class ${item.index}`;
    button.addEventListener("click", () => chooseClass(item));
    li.append(button);
    return li;
  });
  list.replaceChildren(...items);
  $("#classes-section").hidden = false;
}

// ------------------------------------------------------------------ explanations

function chooseClass(item) {
  state.target = item.index;
  for (const button of document.querySelectorAll(".class")) {
    button.classList.toggle("selected", Number(button.dataset.index) === item.index);
  }
  $("#target-text").textContent = `explaining “${item.label}” (class ${item.index})`;
  explainAll();
}

function explainAll() {
  if (!state.image || state.target === null) return;
  $("#explain-empty").hidden = true;
  explainIn(panels.a, $("#method").value);
  const other = $("#compare").value;
  if (other) {
    explainIn(panels.b, other);
  } else {
    panels.b.reset();
    panels.b.root.hidden = true;
  }
  $("#panels").classList.toggle("compare", Boolean(other));
}

function explainIn(panel, method) {
  const image = state.image.id;
  const target = state.target;
  $(".panel-title", panel.root).textContent = method.replaceAll("_", " ");
  panel.img.dataset.method = method;
  panel.run(
    () => postJSON("/api/explanations", {image, method, target}),
    (result, job) => {
      const value = result.target_score === null ? "?" : result.target_score.toPrecision(4);
      const cached = job.cached ? ", cached" : "";
      return `${result.label} · ${result.score} ${value} · ${result.seconds} s${cached} · ${colourKey(result)}`;
    },
  );
}

// How to read the colours: the overlay uses a diverging map for signed maps, jet for the others.
function colourKey(result) {
  const low = result.map_min;
  const high = result.map_max;
  if (low === null || high === null) return "map has no finite values";
  const range = `${low.toPrecision(3)} … ${high.toPrecision(3)}`;
  return low < 0 ? `blue against, red for the class (map ${range})` : `blue low, red high (map ${range})`;
}

// ------------------------------------------------------------------ layers and units

async function loadGrid() {
  const layer = state.layer;
  const img = $("#grid");
  $("#unit").hidden = true;
  $("#grid-mark").hidden = true;
  state.grid = null;
  if (!layer) {
    img.hidden = true;
    $("#grid-hint").hidden = true;
    return;
  }
  if (!state.image) {
    $("#layer-text").textContent = "open a picture to see this layer's activations";
    return;
  }
  $("#layer-text").textContent = "computing the activations…";
  try {
    const grid = await api(`/api/images/${state.image.id}/activations?layer=${encodeURIComponent(layer)}`);
    if (state.layer !== layer) return;
    const loaded = new Promise((resolve) => { img.onload = resolve; });
    img.src = grid.png;
    await loaded;
    state.grid = grid;
    img.hidden = false;
    $("#grid-hint").hidden = false;
    $("#layer-text").textContent = `${grid.units} units; strongest here: ${grid.strongest.slice(0, 5).join(", ")}`;
  } catch (error) {
    $("#layer-text").textContent = error.message;
    setStatus(error.message, true);
  }
}

// Which unit a click on the grid picture lands on (null in the gaps between tiles).
function unitAt(event) {
  const grid = state.grid;
  const img = $("#grid");
  if (!grid) return null;
  const scale = img.naturalWidth / img.clientWidth;
  const x = event.offsetX * scale;
  const y = event.offsetY * scale;
  const stepY = grid.cell[0] + grid.gap;
  const stepX = grid.cell[1] + grid.gap;
  const row = Math.floor((y - grid.gap) / stepY);
  const column = Math.floor((x - grid.gap) / stepX);
  if (row < 0 || column < 0 || column >= grid.columns) return null;
  const unit = row * grid.columns + column;
  return unit < grid.units ? {unit, row, column} : null;
}

function markUnit(hit) {
  const grid = state.grid;
  const img = $("#grid");
  const scale = img.clientWidth / img.naturalWidth;
  const mark = $("#grid-mark");
  mark.style.left = `${(grid.gap + hit.column * (grid.cell[1] + grid.gap) - 1) * scale}px`;
  mark.style.top = `${(grid.gap + hit.row * (grid.cell[0] + grid.gap) - 1) * scale}px`;
  mark.style.width = `${(grid.cell[1] + 2) * scale}px`;
  mark.style.height = `${(grid.cell[0] + 2) * scale}px`;
  mark.hidden = false;
}

function openUnit(unit) {
  const layer = state.layer;
  $("#unit").hidden = false;
  $("#unit").dataset.unit = unit;
  $("#unit-title").textContent = `${layer} · unit ${unit}`;
  if (state.info.folder) {
    panels.top.run(
      () => postJSON("/api/units/top", {layer, channel: unit}),
      (result) => {
        const listed = result.top.map((t) => `${t.source} (${t.score.toPrecision(3)})`).join(", ");
        const dead = result.top.every((t) => t.score <= 0) ? " — this unit stays at 0 on every folder picture" : "";
        return `from the left: ${listed}${dead}`;
      },
    );
  } else {
    panels.top.reset();
    panels.top.facts.textContent = "Start the server with --images DIR to rank the folder's pictures for this unit.";
  }
  panels.am.run(
    () => postJSON("/api/units/maximize", {layer, channel: unit}),
    (result) => `${result.steps} steps · mean activation ${result.objective === null ? "?" : result.objective.toPrecision(4)}`,
  );
}

// ------------------------------------------------------------------ start-up and events

function fillMethods(info) {
  const method = $("#method");
  const compare = $("#compare");
  for (const spec of info.methods) {
    const option = new Option(spec.name.replaceAll("_", " "), spec.name);
    option.title = spec.summary;
    method.append(option);
    compare.append(new Option(spec.name.replaceAll("_", " "), spec.name));
  }
  method.value = info.default_method;
}

function fillLayers(layers) {
  const select = $("#layer");
  for (const layer of layers) {
    if (!layer.spatial) continue;
    const shape = layer.shape ? layer.shape.join("×") : "?";
    select.append(new Option(`${layer.name}  (${layer.op_type}, ${shape})`, layer.name));
  }
}

function wireDragAndDrop() {
  const veil = $("#drop-veil");
  let depth = 0;
  const hasFiles = (event) => Array.from(event.dataTransfer?.types || []).includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    depth += 1;
    veil.hidden = false;
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) veil.hidden = true;
  });
  document.addEventListener("dragover", (event) => {
    if (hasFiles(event)) event.preventDefault();
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    veil.hidden = true;
    const file = event.dataTransfer?.files?.[0];
    if (file) openUpload(file);
  });
}

async function start() {
  panels.a = new JobPanel($("#panel-a"), 'img[data-kind="heatmap"]');
  panels.b = new JobPanel($("#panel-b"), 'img[data-kind="heatmap"]');
  panels.top = new JobPanel($("#unit-top"), 'img[data-kind="top-images"]');
  panels.am = new JobPanel($("#unit-am"), 'img[data-kind="maximization"]');

  $("#file").addEventListener("change", (event) => openUpload(event.target.files[0]));
  $("#folder").addEventListener("change", (event) => openFolderFile(event.target.value));
  $("#method").addEventListener("change", explainAll);
  $("#compare").addEventListener("change", explainAll);
  $("#layer").addEventListener("change", (event) => {
    state.layer = event.target.value;
    loadGrid();
  });
  $("#grid").addEventListener("click", (event) => {
    const hit = unitAt(event);
    if (hit === null) return;
    markUnit(hit);
    openUnit(hit.unit);
  });
  wireDragAndDrop();

  setStatus("loading the model's description…");
  try {
    state.info = await api("/api/info");
    $("#model-name").textContent = `${state.info.model} · ${state.info.classes} classes · input ${state.info.input.join("×")}`;
    fillMethods(state.info);
    if (state.info.folder) {
      const folder = await api("/api/folder");
      for (const name of folder.files) $("#folder").append(new Option(name, name));
      $("#folder-row").hidden = folder.files.length === 0;
    }
    fillLayers((await api("/api/layers")).layers);
    setStatus("");
    document.body.dataset.ready = "1";
  } catch (error) {
    setStatus(error.message, true);
  }
}

document.addEventListener("DOMContentLoaded", start);
