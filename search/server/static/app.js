// The compsearch page: browses the collection, sends queries, shows the results.
// One current query (browse, text, id or image) is re-run whenever the property, a filter,
// the page size or the page changes, so what is shown always matches every control.
// Everything from the index (keys, metadata) goes in as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("query-form"), textBox = $("text"), idBox = $("id"), propertyBox = $("property"), kBox = $("k");
const statusLine = $("status"), gallery = $("gallery");
const filterInputs = ["filter-column", "filter-op", "filter-value", "folder", "date-column", "date-from", "date-to",
                      "order"].map($);
let maxUploadBytes = Infinity, columns = {}, current = { kind: "browse" }, offset = 0, lastCount = 0, total = null;
let generation = 0;  // answers to superseded requests are dropped

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

const isNumeric = (type) => /^(u?int|float|double|halffloat|decimal)/.test(type || "");
const isDate = (type) => /^(timestamp|date)/.test(type || "");

function literal(value, type) {
  if (isNumeric(type) && value.trim() !== "" && !Number.isNaN(Number(value))) return value.trim();
  return `'${value.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}

function quoted(name) {
  return /^[A-Za-z_][\w.\-]*$/.test(name) ? name : `\`${name}\``;
}

// The filter controls as one `where` expression (search/filters.py's grammar), or null.
function whereExpression() {
  const parts = [];
  const column = $("filter-column").value, value = $("filter-value").value;
  if (column && value !== "") parts.push(`${quoted(column)} ${$("filter-op").value} ${literal(value, columns[column])}`);
  const folder = $("folder").value.trim().replace(/^\/+|\/+$/g, "");
  if (folder) parts.push(`${"folder" in columns ? "folder" : "key"} like ${literal(`${folder}/%`, "string")}`);
  const dateColumn = $("date-column").value;
  if (dateColumn && $("date-from").value) parts.push(`${quoted(dateColumn)} >= '${$("date-from").value}'`);
  if (dateColumn && $("date-to").value) parts.push(`${quoted(dateColumn)} < '${nextDay($("date-to").value)}'`);
  return parts.length ? parts.join(" and ") : null;
}

function nextDay(date) {  // "to" includes its whole day
  const day = new Date(`${date}T00:00:00Z`);
  day.setUTCDate(day.getUTCDate() + 1);
  return day.toISOString().slice(0, 10);
}

function describe(query) {
  if (query.kind === "text") return `“${query.text}”`;
  if (query.kind === "id") return `like #${query.id}${query.label ? ` (${query.label})` : ""}`;
  if (query.kind === "image") return `the image ${query.file.name}`;
  return "the collection";
}

function clearResults() {
  gallery.replaceChildren();
  $("identical").hidden = true;
  lastCount = 0;
  total = null;
  updatePager();
}

function updatePager() {
  const k = Number(kBox.value);
  $("prev").disabled = offset === 0;
  $("next").disabled = total !== null ? offset + k >= total : lastCount < k;
  const pages = total !== null ? ` of ${Math.max(1, Math.ceil(total / k))}` : "";
  $("page").textContent = lastCount || offset ? `page ${Math.floor(offset / k) + 1}${pages}` : "";
}

function card(result) {
  const element = $("card").content.firstElementChild.cloneNode(true);
  element.dataset.id = result.id;
  const link = element.querySelector(".open");
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
  element.querySelector(".score").textContent = result.score === undefined ? `#${result.id}` : result.score.toFixed(3);
  element.querySelector(".key").textContent = result.key;
  const details = Object.entries(result.scores || {}).map(([name, value]) => `${name}: ${value.toFixed(3)}`);
  details.push(...Object.entries(result.metadata || {}).map(([name, value]) => `${name}: ${value}`));
  element.title = details.join("\n");
  const more = element.querySelector(".more");
  more.textContent = `more like this by ${propertyBox.value}`;
  more.addEventListener("click", () => start({ kind: "id", id: result.id, label: result.key }));
  const explain = element.querySelector(".explain");
  if (current.kind === "browse") explain.remove();
  else explain.addEventListener("click", () => why(result));
  return element;
}

function show(payload) {
  gallery.replaceChildren(...payload.results.map(card));
  lastCount = payload.results.length;
  total = payload.query.total ?? null;
  const identical = $("identical");
  identical.hidden = !(payload.identical && payload.identical.length);
  if (!identical.hidden) {
    identical.textContent = `This very file is in the index: ${payload.identical.map((id) => `#${id}`).join(", ")} ` +
                            "(left out of the results below).";
  }
  const seconds = payload.seconds && payload.seconds.total !== undefined ? ` in ${(payload.seconds.total * 1000).toFixed(0)} ms` : "";
  const what = current.kind === "browse"
    ? `${payload.query.total} images${payload.query.where ? " matching the filters" : ""}`
    : `${payload.results.length} results for ${describe(current)} by ${propertyBox.value}`;
  setStatus(what + seconds);
  updatePager();
}

function request() {
  const k = Number(kBox.value), where = whereExpression();
  if (current.kind === "browse") {
    const parameters = new URLSearchParams({ offset, limit: k, order: $("order").value || "path" });
    if (where) parameters.set("where", where);
    return api(`api/browse?${parameters}`);
  }
  if (current.kind === "image") {
    const data = new FormData();
    data.append("image", current.file);
    data.append("property", propertyBox.value);
    data.append("k", k);
    data.append("offset", offset);
    if (where) data.append("where", where);
    return api("api/search", { method: "POST", body: data });
  }
  const query = current.kind === "text" ? { text: current.text } : { id: current.id };
  return api("api/search", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ ...query, property: propertyBox.value, k, offset, ...(where ? { where } : {}) }),
  });
}

// Runs the current query on the current controls; an error clears what was shown, so no
// stale result is ever taken for the answer to the new question.
async function run() {
  const mine = ++generation;
  setStatus(current.kind === "browse" ? "loading…" : "searching…");
  try {
    const payload = await request();
    if (mine === generation) show(payload);
  } catch (error) {
    if (mine !== generation) return;
    clearResults();
    setStatus(error.message, true);
  }
}

function start(query) {
  current = query;
  offset = 0;
  run();
}

function searchByImage(file) {
  if (!file) return;
  if (file.size > maxUploadBytes) {
    clearResults();
    setStatus(`${file.name} is larger than the ${(maxUploadBytes / 1048576).toFixed(0)} MB the server accepts`, true);
    return;
  }
  const reference = $("reference");
  if (reference.src) URL.revokeObjectURL(reference.src);
  reference.src = URL.createObjectURL(file);
  reference.hidden = false;
  textBox.value = idBox.value = "";
  start({ kind: "image", file });
}

async function why(result) {
  const dialog = $("why");
  $("why-title").textContent = `Why #${result.id} (${result.key}) matches ${describe(current)} by ${propertyBox.value}`;
  for (const side of ["query", "result"]) {
    $(`why-${side}`).hidden = true;
    $(`why-${side}-caption`).textContent = "";
  }
  $("why-status").textContent = "computing the heatmaps…";
  $("why-status").classList.remove("error");
  if (!dialog.open) dialog.showModal();
  try {
    let answer;
    if (current.kind === "image") {
      const data = new FormData();
      data.append("image", current.file);
      data.append("id", result.id);
      data.append("property", propertyBox.value);
      answer = await api("api/explain", { method: "POST", body: data });
    } else {
      const query = current.kind === "text" ? { text: current.text } : { query_id: current.id };
      answer = await api("api/explain", {
        method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ id: result.id, property: propertyBox.value, ...query }),
      });
    }
    for (const side of ["query", "result"]) {
      const explanation = answer[side], image = $(`why-${side}`);
      if (!explanation) continue;
      if (image.src) URL.revokeObjectURL(image.src);
      const bytes = Uint8Array.from(atob(explanation.png), (character) => character.charCodeAt(0));
      image.src = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
      image.hidden = false;
      $(`why-${side}-caption`).textContent = explanation.caption;
    }
    $("why-status").textContent = answer.note || "";
  } catch (error) {
    $("why-status").textContent = error.message;
    $("why-status").classList.add("error");
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

function showColumns(found) {
  columns = found;
  const names = Object.keys(columns).filter((name) => name !== "sha256");
  $("filter-column").append(...names.map((name) => new Option(name, name)));
  // When a photo was taken (EXIF) before when its file last changed: the date people mean.
  const dates = names.filter((name) => isDate(columns[name])).sort((a, b) => (b === "taken") - (a === "taken"));
  $("date-column").replaceChildren(...dates.map((name) => new Option(name, name)));
  $("dates").hidden = dates.length === 0;
  const orders = [["path", "folder"], ...dates.map((name) => [`-${name}`, `${name}, newest first`]),
                  ...dates.map((name) => [name, `${name}, oldest first`]), ["key", "key"], ["id", "id"]];
  $("order").replaceChildren(...orders.filter(([value]) => value.replace(/^-/, "") in columns)
                                       .map(([value, label]) => new Option(label, value)));
}

async function load() {
  try {
    const [health, info] = await Promise.all([api("api/health"), api("api/info")]);
    maxUploadBytes = health.max_upload_bytes;
    propertyBox.replaceChildren(...health.properties.map((name) => new Option(name, name)));
    if (!health.text_queries) {
      textBox.disabled = true;
      textBox.placeholder = health.unavailable.text ? `text queries unavailable: ${health.unavailable.text}`
                                                   : "this index has no text encoder: search by image or id";
    }
    if (!health.image_queries) {
      $("drop").classList.add("disabled");
      $("drop").title = `image queries unavailable: ${health.unavailable.image}`;
    }
    showInfo(info);
    showColumns(info.columns || {});
    start({ kind: "browse" });
  } catch (error) {
    setStatus(error.message, true);
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = textBox.value.trim(), id = idBox.value.trim();
  if (text) start({ kind: "text", text });
  else if (id) start({ kind: "id", id: Number(id) });
  else start(current);  // nothing typed: the current query (an uploaded image, browsing) on the current controls
});
$("browse").addEventListener("click", () => { textBox.value = idBox.value = ""; start({ kind: "browse" }); });
propertyBox.addEventListener("change", () => { if (current.kind !== "browse") start(current); });
kBox.addEventListener("change", () => start(current));
for (const input of filterInputs) input.addEventListener("change", () => start(current));
$("prev").addEventListener("click", () => { offset = Math.max(0, offset - Number(kBox.value)); run(); });
$("next").addEventListener("click", () => { offset += Number(kBox.value); run(); });
$("file").addEventListener("change", (event) => searchByImage(event.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  searchByImage(event.dataTransfer.files[0]);
});
load();
