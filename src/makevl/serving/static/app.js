// The search page: calls GET /search and draws one card per result.
// Text from the index is only ever set with textContent, never as HTML.
"use strict";

const form = document.getElementById("search-form");
const input = document.getElementById("q");
const kSelect = document.getElementById("k");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");

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

async function search(query, k) {
  statusLine.textContent = "searching…";
  statusLine.className = "";
  try {
    const params = new URLSearchParams({ q: query, k: String(k) });
    const response = await fetch(`/search?${params}`);
    const body = await response.json();
    if (!response.ok) {
      throw new Error(typeof body.detail === "string" ? body.detail : response.statusText);
    }
    results.replaceChildren(...body.results.map(card));
    statusLine.textContent =
      `${body.results.length} results for “${body.query}” in ${body.took_ms.toFixed(1)} ms`;
  } catch (error) {
    results.replaceChildren();
    statusLine.textContent = `error: ${error.message}`;
    statusLine.className = "error";
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const query = input.value.trim();
  if (!query) return;
  const url = new URL(window.location);
  url.searchParams.set("q", query);
  url.searchParams.set("k", kSelect.value);
  history.replaceState(null, "", url);
  search(query, kSelect.value);
});

// A shared link (/?q=...&k=...) runs its search on load.
const initial = new URLSearchParams(window.location.search);
if (initial.get("k")) kSelect.value = initial.get("k");
if (initial.get("q")) {
  input.value = initial.get("q");
  search(input.value.trim(), kSelect.value);
}
