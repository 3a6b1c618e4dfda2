// The try-it page (GET /ui): a client of the public API, as a storefront would be (search, search
// by photo, more like this).
// Results are built with DOM nodes and textContent only: listing data never becomes markup.
"use strict";

const FIELDS = ["price", "category", "images"];
const THUMBS = 4; // photos shown per hit beside the primary one

const $ = (id) => document.getElementById(id);

// What is on screen: a search (its POST body), a search by photo (the file and its options) or
// listings like one (its id and title), and the page. `main`: the search "Back" returns to.
const view = { kind: null, body: null, photo: null, like: null, offset: 0, k: 12, main: "search" };
let defaultMode = null; // from /readyz: the mode a request without "mode" is answered in

class FormError extends Error {}

class ApiError extends Error {
  constructor(status, code, message, requestId) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

function list(text) {
  return text.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
}

// "color=red, color=blue, material=wool" -> {color: ["red", "blue"], material: ["wool"]}
function parseAttributes(text) {
  const out = {};
  for (const entry of list(text)) {
    const at = entry.indexOf("=");
    const key = at < 0 ? "" : entry.slice(0, at).trim();
    const value = at < 0 ? "" : entry.slice(at + 1).trim();
    if (!key || !value) {
      throw new FormError(`attributes: "${entry}" is not KEY=value`);
    }
    (out[key] = out[key] || []).push(value);
  }
  return out;
}

function number(id) {
  const raw = $(id).value.trim();
  if (raw === "") return null;
  const value = Number(raw);
  if (!Number.isFinite(value)) throw new FormError(`${$(id).name}: "${raw}" is not a number`);
  return value;
}

function readFilters() {
  const filters = {};
  const category = list($("category").value);
  if (category.length) filters.category = category;
  const attributes = parseAttributes($("attributes").value);
  if (Object.keys(attributes).length) filters.attributes = attributes;
  const min = number("price-min");
  const max = number("price-max");
  if (min !== null || max !== null) {
    filters.price = {};
    if (min !== null) filters.price.min = min;
    if (max !== null) filters.price.max = max;
  }
  return filters;
}

function readK() {
  const k = number("k");
  if (k === null || !Number.isInteger(k)) throw new FormError("k: a whole number of results per page");
  return k;
}

function effectiveMode() {
  return $("mode").value || defaultMode;
}

// The POST /search body of the form (offset added per page).
function readSearch() {
  const body = { query: $("q").value, k: readK(), fields: FIELDS, explain: true };
  const filters = readFilters();
  if (Object.keys(filters).length) body.filters = filters;
  if ($("mode").value) body.mode = $("mode").value;
  if (effectiveMode() === "hybrid") {
    const fusion = $("fusion").value;
    if (fusion) body.fusion = fusion;
    if (fusion === "rrf") {
      const rrfK = number("rrf-k");
      if (rrfK !== null) body.rrf_k = rrfK;
    }
    if (fusion === "weighted") {
      const weights = {};
      const dense = number("dense-weight");
      const lexical = number("lexical-weight");
      if (dense !== null) weights.dense = dense;
      if (lexical !== null) weights.lexical = lexical;
      if (Object.keys(weights).length) body.weights = weights;
    }
  }
  return body;
}

// The form's filters, pages and fields as GET-style query parameters.
function filterParams(filters, k, offset) {
  const params = new URLSearchParams({ k: String(k), offset: String(offset), fields: FIELDS.join(",") });
  for (const c of filters.category || []) params.append("category", c);
  for (const [key, values] of Object.entries(filters.attributes || {})) {
    for (const v of values) params.append(`attr.${key}`, v);
  }
  if (filters.price && filters.price.min !== undefined) params.set("price_min", String(filters.price.min));
  if (filters.price && filters.price.max !== undefined) params.set("price_max", String(filters.price.max));
  return params;
}

// GET /listings/{id}/similar with the form's filters, as query parameters.
function similarUrl(id, filters, k, offset) {
  return `/listings/${encodeURIComponent(id)}/similar?${filterParams(filters, k, offset)}`;
}

// POST /search/image: the photo as multipart/form-data, the options in the query string.
function photoRequest(photo, k, offset) {
  const params = filterParams(photo.filters, k, offset);
  params.set("explain", "1");
  if (photo.head) params.set("head", photo.head);
  const form = new FormData();
  form.append("image", photo.file, photo.file.name || "photo");
  return [`/search/image?${params}`, { method: "POST", body: form }];
}

async function call(url, init) {
  let response;
  try {
    response = await fetch(url, init);
  } catch (e) {
    throw new ApiError(0, "NetworkError", `the service did not answer (${e.message})`, null);
  }
  const requestId = response.headers.get("X-Request-ID");
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const code = body && body.error ? body.error : `HTTP ${response.status}`;
    const message = (body && (body.message || body.reason)) || response.statusText; // /readyz: "reason"
    throw new ApiError(response.status, code, message, requestId);
  }
  return { body, requestId };
}

function showError(err) {
  const box = $("error");
  box.replaceChildren();
  if (err instanceof ApiError) {
    const code = document.createElement("strong");
    code.className = "error-code";
    code.textContent = err.status ? `${err.status} ${err.code}` : err.code;
    const message = document.createElement("span");
    message.className = "error-message";
    message.textContent = `: ${err.message}`;
    box.append(code, message);
    if (err.requestId) {
      const rid = document.createElement("span");
      rid.className = "muted";
      rid.textContent = ` (request ${err.requestId})`;
      box.append(rid);
    }
  } else {
    box.textContent = err.message;
  }
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

function img(src, alt, className) {
  const el = document.createElement("img");
  el.src = src;
  el.alt = alt;
  el.className = className;
  el.decoding = "async";
  return el;
}

function renderHit(hit) {
  const li = document.createElement("li");
  li.className = "hit";
  li.dataset.id = hit.id;

  const photos = hit.images && hit.images.length ? hit.images : hit.image ? [hit.image] : [];
  const figure = document.createElement("div");
  figure.className = "photos";
  if (photos.length) {
    figure.append(img(photos[0], hit.title, "photo"));
    const strip = document.createElement("div");
    strip.className = "thumbs";
    for (const src of photos.slice(1, 1 + THUMBS)) strip.append(img(src, "", "thumb"));
    if (strip.childElementCount) figure.append(strip);
  } else {
    const none = document.createElement("div");
    none.className = "photo none";
    none.textContent = "no photo";
    figure.append(none);
  }

  const title = document.createElement("h3");
  title.className = "title";
  title.textContent = hit.title;

  const facts = document.createElement("p");
  facts.className = "facts";
  const price = document.createElement("span");
  price.className = "price";
  price.textContent = typeof hit.price === "number" ? hit.price.toFixed(2) : "no price";
  const category = document.createElement("span");
  category.className = "category";
  category.textContent = hit.category || "no category";
  facts.append(price, " · ", category);

  const small = document.createElement("p");
  small.className = "muted small";
  small.textContent = `${hit.id} · score ${hit.score.toFixed(4)}`;

  const more = document.createElement("button");
  more.type = "button";
  more.className = "more-like-this";
  more.textContent = "More like this";
  more.addEventListener("click", () => startSimilar(hit.id, hit.title));

  li.append(figure, title, facts, small, more);
  if (hit.explain) li.append(renderExplain(hit.explain));
  return li;
}

function fmt(value, digits) {
  return typeof value === "number" ? value.toFixed(digits) : "–";
}

// The explain panel of a hit (POST /search "explain": true): which list and which view carried it.
function renderExplain(e) {
  const panel = document.createElement("details");
  panel.className = "explain";
  const summary = document.createElement("summary");
  summary.textContent = "Why here?";
  panel.append(summary);
  const rows = [
    ["fused score", fmt(e.fused, 4)],
    ["dense cosine (rank)", `${fmt(e.dense_cosine, 4)} (${e.dense_rank ?? "–"})`],
    ["BM25 raw / normalised (rank)",
     `${fmt(e.lexical_bm25, 3)} / ${fmt(e.lexical_normalized, 3)} (${e.lexical_rank ?? "–"})`],
    ["exact model number", e.identifier_boost ? "yes: ranked first" : "no"],
  ];
  const table = document.createElement("table");
  for (const [name, value] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = name;
    tr.insertCell().textContent = value;
  }
  panel.append(table);
  if (e.views && e.views.length) {
    const views = document.createElement("table");
    views.className = "views";
    const head = views.insertRow();
    for (const h of ["view", "weight", "cosine"]) head.insertCell().textContent = h;
    for (const v of e.views) {
      const tr = views.insertRow();
      tr.className = "view";
      tr.insertCell().textContent = v.view;
      tr.insertCell().textContent = fmt(v.weight, 3);
      tr.insertCell().textContent = fmt(v.cosine, 3);
    }
    panel.append(views);
  }
  if (e.missing && e.missing.length) {
    const note = document.createElement("p");
    note.className = "muted small";
    note.textContent = `this version has no ${e.missing.join(", ")} to explain with`;
    panel.append(note);
  }
  return panel;
}

function render(answer, requestId) {
  const { body } = answer;
  const headings = { similar: () => `Listings like “${view.like.title}”`, photo: () => "Listings like your photo" };
  $("heading").textContent = (headings[view.kind] || (() => "Results"))();
  $("back").hidden = view.kind !== "similar";
  const shown = $("query-photo");
  shown.hidden = view.kind !== "photo" || !view.photo.preview;
  if (!shown.hidden) shown.src = view.photo.preview;

  const meta = $("meta");
  meta.replaceChildren();
  const parts = [
    ["mode", "mode-used", body.mode || "dense"],
    ...(body.photo_head ? [["photo head", "photo-head-used", body.photo_head]] : []),
    ["took_ms", "took-ms", String(body.took_ms)],
    ["request id", "request-id", requestId || "none"],
    ["index", "index-version", body.index_version],
  ];
  parts.forEach(([label, id, value], i) => {
    if (i) meta.append(" · ");
    const v = document.createElement("code");
    v.id = id;
    v.textContent = value;
    meta.append(`${label} `, v);
  });

  $("fallback").hidden = !body.fallback;
  $("fallback").textContent = body.fallback || "";

  const results = $("results");
  results.start = view.offset + 1;
  results.replaceChildren(...body.results.map(renderHit));
  if (!body.results.length) {
    const empty = document.createElement("li");
    empty.className = "empty";
    empty.textContent = view.offset ? "No more results." : "No results: try fewer filters.";
    results.append(empty);
  }

  const n = body.results.length;
  $("page").textContent = n ? `results ${view.offset + 1}–${view.offset + n}` : "";
  $("prev").disabled = view.offset === 0;
  $("next").disabled = n < view.k;
  $("answer").hidden = false;
}

async function load() {
  clearError();
  document.body.classList.add("busy");
  try {
    let answer;
    if (view.kind === "similar") {
      answer = await call(similarUrl(view.like.id, view.like.filters, view.k, view.offset));
    } else if (view.kind === "photo") {
      answer = await call(...photoRequest(view.photo, view.k, view.offset));
    } else {
      answer = await call("/search", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ ...view.body, offset: view.offset }),
      });
    }
    render(answer, answer.requestId);
  } catch (err) {
    showError(err);
  } finally {
    document.body.classList.remove("busy");
  }
}

// Run a form reader: a FormError is shown to the user (-> null); anything else is a bug, thrown.
function readOrShow(read) {
  try {
    return read();
  } catch (err) {
    if (err instanceof FormError) {
      showError(err);
      return null;
    }
    throw err;
  }
}

const readFiltersAndK = () => ({ filters: readFilters(), k: readK() });

function startSearch() {
  const body = readOrShow(readSearch);
  if (!body) return undefined;
  view.body = body;
  Object.assign(view, { kind: "search", like: null, offset: 0, k: view.body.k, main: "search" });
  return load();
}

// A data: URL of the chosen photo for the heading (the page's CSP allows data: images, not blob:).
function preview(file) {
  return new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => resolve(typeof reader.result === "string" ? reader.result : null);
    reader.onerror = () => resolve(null);
    reader.readAsDataURL(file);
  });
}

async function startPhoto() {
  const file = $("photo").files[0];
  if (!file) return showError(new FormError("photo: choose a photo first"));
  const form = readOrShow(readFiltersAndK);
  if (!form) return undefined;
  const { filters, k } = form;
  const photo = { file, filters, head: $("photo-head").value, preview: await preview(file) };
  Object.assign(view, { kind: "photo", photo, like: null, offset: 0, k, main: "photo" });
  return load();
}

function startSimilar(id, title) {
  const form = readOrShow(readFiltersAndK);
  if (!form) return undefined;
  const { filters, k } = form;
  Object.assign(view, { kind: "similar", like: { id, title, filters }, offset: 0, k });
  window.scrollTo(0, 0);
  return load();
}

function turnPage(step) {
  view.offset = Math.max(0, view.offset + step * view.k);
  window.scrollTo(0, 0);
  return load();
}

// Fusion controls only while the search is hybrid, and only those of the chosen fusion.
function syncControls() {
  const hybrid = effectiveMode() === "hybrid";
  const fusion = $("fusion").value;
  for (const el of document.querySelectorAll(".hybrid-only")) {
    let shown = hybrid;
    if (el.classList.contains("rrf-only")) shown = shown && fusion === "rrf";
    if (el.classList.contains("weighted-only")) shown = shown && fusion === "weighted";
    el.hidden = !shown;
  }
}

async function describeService() {
  const served = $("served");
  try {
    const { body } = await call("/readyz");
    const modes = body.search_modes || {};
    defaultMode = modes.default || null;
    const available = modes.available || ["dense"];
    for (const option of $("mode").options) {
      if (option.value && !available.includes(option.value)) {
        option.disabled = true;
        option.textContent += " (this version has no lexical index)";
      }
    }
    if (defaultMode) $("mode").options[0].textContent = `service default (${defaultMode})`;
    const photo = body.photo_search || {};
    if (photo.available) {
      if (photo.default_head) $("photo-head").options[0].textContent = `service default (${photo.default_head})`;
    } else {
      $("photo").disabled = true;
      $("photo-btn").disabled = true;
      $("photo-note").textContent = photo.reason || "this service has no photo search";
    }
    served.textContent = `${body.items} listings · index ${body.index_version} · model ${body.model_version}`;
  } catch (err) {
    served.textContent = err instanceof ApiError ? `not ready: ${err.message}` : String(err);
  }
  syncControls();
}

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    startSearch();
  });
  $("mode").addEventListener("change", syncControls);
  $("fusion").addEventListener("change", syncControls);
  $("prev").addEventListener("click", () => turnPage(-1));
  $("next").addEventListener("click", () => turnPage(1));
  $("back").addEventListener("click", () => {
    if (view.main === "photo" && view.photo) {
      Object.assign(view, { kind: "photo", like: null, offset: 0 });
      load();
      return;
    }
    Object.assign(view, { kind: "search", like: null, offset: 0, k: view.body ? view.body.k : view.k });
    if (view.body) load();
  });
  $("photo").addEventListener("change", () => {
    $("photo-btn").disabled = !$("photo").files.length || $("photo").disabled;
  });
  $("photo-btn").addEventListener("click", () => startPhoto());
  syncControls();
  describeService();
});
