// The search page: calls GET /search and draws one card per result, with facet chips
// (GET /facets) that toggle filters and the keywords Keyword Enhancement added to the query.
// Text from the index is only ever set with textContent, never as HTML.
"use strict";

const form = document.getElementById("search-form");
const input = document.getElementById("q");
const kSelect = document.getElementById("k");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");
const facets = document.getElementById("facets");
const hybrid = document.getElementById("hybrid");
const keywordLine = document.getElementById("keywords");
const activeFilters = new Set(); // "attribute:value"

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function percent(x) {
  return `${Math.round(x * 100)}%`;
}

function weightBar(weights) {
  const bar = el("div", "weights");
  bar.title = `title ${percent(weights.title)}, image ${percent(weights.image)}, ` +
    `title+image ${percent(weights.fused)}`;
  for (const part of ["title", "image", "fused"]) {
    const segment = el("span", part);
    segment.style.width = percent(weights[part]);
    bar.appendChild(segment);
  }
  return bar;
}

function card(result) {
  const node = el("article", "card");
  node.dataset.id = result.id;
  const photo = el("div", "photo");
  if (result.image_url) {
    const img = el("img");
    img.loading = "lazy";
    img.alt = result.title;
    img.src = result.image_url;
    photo.appendChild(img);
  } else {
    photo.appendChild(el("span", "no-image", "no image"));
  }
  node.appendChild(photo);
  node.appendChild(el("h2", "product-title", result.title));
  const meta = el("div", "meta");
  const weights = result.modality_weights;
  meta.appendChild(el("span", "score", `score ${result.score.toFixed(2)}`));
  meta.appendChild(el("span", "split",
    `title ${percent(weights.title)} · image ${percent(weights.image)}`));
  node.appendChild(meta);
  node.appendChild(weightBar(weights));
  return node;
}

function searchParams(query, k) {
  const params = new URLSearchParams({ q: query, k: String(k) });
  for (const filter of activeFilters) params.append("filter", filter);
  if (hybrid.checked) params.set("mode", "hybrid");
  return params;
}

function showKeywords(keywords) {
  keywordLine.replaceChildren();
  if (!keywords || keywords.length === 0) return;
  keywordLine.appendChild(el("span", "label", "Keyword Enhancement added: "));
  for (const { keyword, weight } of keywords) {
    keywordLine.appendChild(el("span", "keyword", `${keyword} ${percent(weight)}`));
  }
}

async function search(query, k) {
  statusLine.textContent = "searching…";
  statusLine.className = "";
  try {
    const params = searchParams(query, k);
    params.set("explain", "true");
    const response = await fetch(`/search?${params}`);
    const body = await response.json();
    if (!response.ok) {
      throw new Error(typeof body.detail === "string" ? body.detail : response.statusText);
    }
    results.replaceChildren(...body.results.map(card));
    const where = activeFilters.size ? ` where ${[...activeFilters].join(", ")}` : "";
    const corrected = body.searched_as !== body.query ? ` (searched as “${body.searched_as}”)` : "";
    statusLine.textContent = `${body.results.length} results for “${body.query}”${corrected}` +
      `${where} in ${body.took_ms.toFixed(1)} ms`;
    showKeywords(body.keywords);
  } catch (error) {
    results.replaceChildren();
    keywordLine.replaceChildren();
    statusLine.textContent = `error: ${error.message}`;
    statusLine.className = "error";
  }
}

function run() {
  const query = input.value.trim();
  if (!query) return;
  history.replaceState(null, "", `?${searchParams(query, kSelect.value)}`);
  search(query, kSelect.value);
}

function chip(attribute, value, count) {
  const filter = `${attribute}:${value}`;
  const button = el("button", "chip", `${value} ${count}`);
  button.type = "button";
  button.dataset.filter = filter;
  button.setAttribute("aria-pressed", String(activeFilters.has(filter)));
  button.addEventListener("click", () => {
    if (activeFilters.has(filter)) activeFilters.delete(filter);
    else activeFilters.add(filter);
    button.setAttribute("aria-pressed", String(activeFilters.has(filter)));
    run();
  });
  return button;
}

async function loadFacets() {
  const response = await fetch("/facets?top=8");
  if (!response.ok) return;
  const body = await response.json();
  facets.replaceChildren(...body.facets.map(({ attribute, values }) => {
    const group = el("div", "facet");
    group.appendChild(el("span", "facet-name", attribute));
    for (const { value, count } of values) group.appendChild(chip(attribute, value, count));
    return group;
  }));
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  run();
});
hybrid.addEventListener("change", run);

// A shared link (/?q=...&k=...&filter=...&mode=hybrid) runs its search on load.
const initial = new URLSearchParams(window.location.search);
if (initial.get("k")) kSelect.value = initial.get("k");
for (const filter of initial.getAll("filter")) activeFilters.add(filter);
hybrid.checked = initial.get("mode") === "hybrid";
loadFacets();
if (initial.get("q")) {
  input.value = initial.get("q");
  search(input.value.trim(), kSelect.value);
}
