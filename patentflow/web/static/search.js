// The prior-art search page: POST /api/search, a grid of the hits, a patent's figures, CSV / JSON export.
// Plain DOM, no build step and nothing fetched from elsewhere. Text from the index goes in with
// textContent only, never as HTML.
"use strict";

const HIT_FIELDS = [
  "rank", "score", "image_id", "patent_id", "title", "grant_date", "classifications",
  "figure_labels", "brief_description", "generated_description", "image_url",
];
const THUMBNAIL_SIDE = 480;

let lastSearch = null; // {query, hits}: what the export buttons write

function $(id) {
  return document.getElementById(id);
}

function showError(message) {
  const error = $("error");
  error.textContent = message;
  error.hidden = !message;
}

async function apiError(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}`;
  } catch {
    return `${response.status}: ${response.statusText}`;
  }
}

function thumbnail(url) {
  return `${url}?max_side=${THUMBNAIL_SIDE}`;
}

function hitCard(hit) {
  const card = $("hit-card").content.firstElementChild.cloneNode(true);
  card.dataset.imageId = hit.image_id;
  card.dataset.patentId = hit.patent_id;
  card.dataset.grantDate = hit.grant_date;
  card.dataset.classifications = hit.classifications.join(" ");
  const image = card.querySelector("img");
  image.src = thumbnail(hit.image_url);
  image.alt = `${hit.patent_id} ${hit.figure_labels.join(", ") || hit.image_id}`;
  card.querySelector(".rank").textContent = `#${hit.rank}`;
  card.querySelector(".patent").textContent = hit.patent_id;
  card.querySelector(".score").textContent = `score ${hit.score.toFixed(3)}`;
  card.querySelector(".title").textContent = hit.title;
  card.querySelector(".date").textContent = `granted ${hit.grant_date}`;
  card.querySelector(".labels").textContent = hit.figure_labels.join(", ") || "no FIG label";
  card.querySelector(".classes").textContent = hit.classifications.join(" · ");
  card.querySelector(".brief").textContent = hit.brief_description;
  const generated = card.querySelector(".generated");
  generated.textContent = hit.generated_description ? `PatentLMM: ${hit.generated_description}` : "";
  generated.hidden = !hit.generated_description;
  card.querySelector(".open-patent").addEventListener("click", () => openPatent(hit.patent_id));
  card.querySelector(".open-patent").title = `All figures of ${hit.patent_id}`;
  return card;
}

function figureCard(figure) {
  const card = document.createElement("figure");
  card.className = "card patent-figure";
  card.dataset.imageId = figure.image_id;
  const image = document.createElement("img");
  image.src = thumbnail(figure.image_url);
  image.alt = figure.figure_labels.join(", ") || figure.image_id;
  image.loading = "lazy";
  const caption = document.createElement("figcaption");
  const labels = document.createElement("strong");
  labels.textContent = figure.figure_labels.join(", ") || figure.image_id;
  const brief = document.createElement("span");
  brief.textContent = ` ${figure.brief_description}`;
  caption.append(labels, brief);
  if (figure.generated_description) {
    const generated = document.createElement("p");
    generated.className = "generated";
    generated.textContent = `PatentLMM: ${figure.generated_description}`;
    caption.append(generated);
  }
  card.append(image, caption);
  return card;
}

async function openPatent(patentId) {
  showError("");
  const response = await fetch(`/api/patents/${encodeURIComponent(patentId)}/figures`);
  if (!response.ok) {
    showError(await apiError(response));
    return;
  }
  const patent = await response.json();
  $("patent-title").textContent = `${patent.patent_id}: ${patent.title}`;
  $("patent-meta").textContent =
    `granted ${patent.grant_date} · ${patent.classifications.join(" · ")} · ${patent.figures.length} figures`;
  $("patent-figures").replaceChildren(...patent.figures.map(figureCard));
  $("patent").showModal();
}

function describeQuery(form) {
  const data = new FormData(form);
  const images = data.getAll("image").filter((file) => file.name).map((file) => file.name);
  return {
    images,
    text: data.get("text") || null,
    before: data.get("before") || null,
    classification: data.get("classification") || null,
    k: Number(data.get("k")),
  };
}

async function search(event) {
  event.preventDefault();
  const form = event.target;
  showError("");
  const limit = Number(form.dataset.maxUploadBytes);
  const size = [...$("image").files].reduce((total, file) => total + file.size, 0);
  if (size > limit) {
    // The server refuses it too (413), but only after the upload: say so before sending.
    showError(`The drawings are ${(size / 1048576).toFixed(1)} MB, over the limit of ${(limit / 1048576).toFixed(1)} MB.`);
    return;
  }
  $("status").textContent = "Searching…";
  $("search").disabled = true;
  try {
    const response = await fetch("/api/search", { method: "POST", body: new FormData(form) });
    if (!response.ok) {
      $("status").textContent = "";
      showError(await apiError(response));
      return;
    }
    const { hits } = await response.json();
    lastSearch = { query: describeQuery(form), hits };
    $("results").replaceChildren(...hits.map(hitCard));
    $("status").textContent = hits.length ? `${hits.length} figures` : "No figure passes these filters.";
    $("export-csv").disabled = $("export-json").disabled = !hits.length;
  } catch (error) {
    $("status").textContent = "";
    showError(`The search failed: ${error}`);
  } finally {
    $("search").disabled = false;
  }
}

function absolute(hit) {
  return { ...hit, image_url: new URL(hit.image_url, window.location.origin).href };
}

function csvCell(value) {
  const text = Array.isArray(value) ? value.join("; ") : String(value ?? "");
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function download(name, type, content) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([content], { type }));
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

function exportCsv() {
  const rows = lastSearch.hits.map(absolute).map((hit) => HIT_FIELDS.map((field) => csvCell(hit[field])).join(","));
  download("prior-art-search.csv", "text/csv", [HIT_FIELDS.join(","), ...rows].join("\r\n") + "\r\n");
}

function exportJson() {
  const record = { query: lastSearch.query, hits: lastSearch.hits.map(absolute) };
  download("prior-art-search.json", "application/json", JSON.stringify(record, null, 2) + "\n");
}

function listViews(event) {
  const names = [...event.target.files].map((file) => {
    const item = document.createElement("li");
    item.textContent = file.name;
    return item;
  });
  $("views").replaceChildren(...names);
}

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", search);
  $("image").addEventListener("change", listViews);
  $("export-csv").addEventListener("click", exportCsv);
  $("export-json").addEventListener("click", exportJson);
  $("patent-close").addEventListener("click", () => $("patent").close());
});
