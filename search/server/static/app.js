// The compsearch page: asks /api for the index, sends queries, shows the results.
// Everything from the index (keys, metadata) goes in as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("query-form"), textBox = $("text"), propertyBox = $("property"), kBox = $("k");
const statusLine = $("status"), gallery = $("gallery");
let maxUploadBytes = Infinity;

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.hint ? `${body.error} — ${body.hint}` : body.error);
  return body;
}

function setStatus(message, isError = false) {
  statusLine.textContent = message;
  statusLine.classList.toggle("error", isError);
}

function describeQuery(query) {
  const terms = (query.terms || [query]).map((term) => `${term.kind || ""} ${term.value ?? ""}`.trim());
  return terms.filter(Boolean).join(" + ");
}

function show(payload, label) {
  gallery.replaceChildren();
  const template = $("card");
  for (const result of payload.results) {
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.id = result.id;
    const link = card.querySelector(".open");
    if (result.thumbnail_url) {
      link.href = result.image_url;
      link.querySelector(".thumb").src = result.thumbnail_url;
      link.querySelector(".thumb").alt = result.key;
    } else {  // a file the server does not send (outside the collection)
      const missing = document.createElement("div");
      missing.className = "thumb missing";
      missing.textContent = "file not served";
      link.replaceWith(missing);
    }
    card.querySelector(".score").textContent = result.score.toFixed(3);
    card.querySelector(".key").textContent = result.key;
    card.title = Object.entries(result.scores || {}).map(([name, value]) => `${name}: ${value.toFixed(3)}`).join("\n");
    const more = card.querySelector(".more");
    more.textContent = `more like this by ${propertyBox.value}`;
    more.addEventListener("click", () => search({ id: result.id, property: propertyBox.value },
                                                 `like #${result.id} (${result.key})`));
    gallery.append(card);
  }
  const seconds = payload.seconds && payload.seconds.total !== undefined ? ` in ${(payload.seconds.total * 1000).toFixed(0)} ms` : "";
  setStatus(`${payload.results.length} results for ${label} by ${propertyBox.value}${seconds}`);
}

async function search(query, label) {
  setStatus("searching…");
  try {
    const payload = await api("api/search", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...query, k: Number(kBox.value) }),
    });
    show(payload, label || describeQuery(payload.query));
  } catch (error) {
    setStatus(error.message, true);
  }
}

async function searchByImage(file) {
  if (!file) return;
  if (file.size > maxUploadBytes) {
    setStatus(`${file.name} is larger than the ${(maxUploadBytes / 1048576).toFixed(0)} MB the server accepts`, true);
    return;
  }
  const reference = $("reference");
  if (reference.src) URL.revokeObjectURL(reference.src);
  reference.src = URL.createObjectURL(file);
  reference.hidden = false;
  const data = new FormData();
  data.append("image", file);
  data.append("property", propertyBox.value);
  data.append("k", kBox.value);
  setStatus("searching…");
  try {
    show(await api("api/search", { method: "POST", body: data }), `the image ${file.name}`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

function showInfo(info) {
  const rows = {
    images: `${info.images} (${info.skipped} skipped, ${info.duplicates} duplicates)`,
    model: `${info.model.name}, decomposed from ${info.model.first_block}`,
    space: info.clip ? `${info.space} (CLIP ${info.clip.name})` : info.space,
    properties: Object.entries(info.properties).map(([name, entry]) => `${name} (k=${entry.k})`).join(", ") || "none",
    indexes: Object.entries(info.indexes).map(([name, entry]) => `${name}: ${entry.factory}, ${entry.ntotal} vectors`).join("; "),
    updated: info.updated || info.created || "",
  };
  const list = $("info");
  list.replaceChildren();
  for (const [name, value] of Object.entries(rows)) {
    const term = document.createElement("dt"), detail = document.createElement("dd");
    term.textContent = name;
    detail.textContent = value;
    list.append(term, detail);
  }
  $("summary").textContent = `${info.images} images · ${info.model.name} · ${Object.keys(info.properties).length} properties`;
}

async function start() {
  try {
    const [health, info] = await Promise.all([api("api/health"), api("api/info")]);
    maxUploadBytes = health.max_upload_bytes;
    propertyBox.replaceChildren(...health.properties.map((name) => new Option(name, name)));
    if (!health.text_queries) {
      textBox.disabled = true;
      textBox.placeholder = "this index has no text encoder: search by image";
    }
    showInfo(info);
    setStatus("type a query, or drop a reference image");
  } catch (error) {
    setStatus(error.message, true);
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = textBox.value.trim();
  if (!text) { setStatus("type what to look for first", true); return; }
  search({ text, property: propertyBox.value }, `“${text}”`);
});
propertyBox.addEventListener("change", () => {
  for (const button of gallery.querySelectorAll(".more")) button.textContent = `more like this by ${propertyBox.value}`;
});
$("file").addEventListener("change", (event) => searchByImage(event.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  searchByImage(event.dataTransfer.files[0]);
});
start();
