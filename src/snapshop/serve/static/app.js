// The snapshop search page: a photo in (file, camera, drop, paste), boxes and results out.
// Talks only to this server: POST search, POST clicks, GET stats, GET items/{id}/image.
"use strict";

const RESULTS = 12;
const MIN_DRAG = 8; // pixels on screen: a shorter drag is a tap

const $ = (id) => document.getElementById(id);

const state = {
  photo: null,      // the Blob being searched
  box: null,        // the box the shopper chose or drew, in photo pixels; null: the detected one
  detected: [],     // boxes found when the photo was searched whole
  category: null,   // the category chip chosen; null: the predicted one
  categories: [],
  answer: null,     // the last /search answer
  size: null,       // [width, height] of the upright photo
  request: null,    // AbortController of the search in flight
};

// --- status: idle, loading, error, nomatch, empty, done ----------------------------------------

function setStatus(kind, text) {
  $("status").dataset.state = kind;
  $("status-text").textContent = text;
  $("results").setAttribute("aria-busy", kind === "loading" ? "true" : "false");
}

// --- a new photo -----------------------------------------------------------------------------

function setPhoto(blob) {
  if (!blob) return;
  state.photo = blob;
  state.box = null;
  state.detected = [];
  state.category = null;
  state.size = null;
  const photo = $("photo");
  if (photo.src) URL.revokeObjectURL(photo.src);
  photo.src = URL.createObjectURL(blob);
  $("stage-wrap").hidden = false;
  $("drop").classList.add("compact");
  $("boxes").replaceChildren();
  search();
}

function firstImage(items) {
  for (const item of items || []) {
    if (item.kind === "file" || item instanceof File) {
      const file = item instanceof File ? item : item.getAsFile();
      if (file) return file;
    }
  }
  return null;
}

// --- searching -------------------------------------------------------------------------------

async function search() {
  if (!state.photo) return;
  if (state.request) state.request.abort();
  const request = new AbortController();
  state.request = request;
  const form = new FormData();
  form.append("image", state.photo, "photo");
  form.append("k", String(RESULTS));
  if (state.box) form.append("box", state.box.join(","));
  if (state.category) form.append("category", state.category);
  setStatus("loading", "Searching…");
  $("stage").classList.add("busy");
  const started = performance.now();
  try {
    const response = await fetch("search", { method: "POST", body: form, signal: request.signal });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      const message = (answer.error && answer.error.message) || `the server answered ${response.status}`;
      throw new Error(message);
    }
    answer.roundTripMs = performance.now() - started;
    show(answer);
  } catch (error) {
    if (error.name === "AbortError") return;
    setStatus("error", `Search failed: ${error.message === "Failed to fetch" ? "cannot reach the server" : error.message}`);
  } finally {
    if (state.request === request) {
      state.request = null;
      $("stage").classList.remove("busy");
    }
  }
}

function show(answer) {
  state.answer = answer;
  state.size = answer.image_size;
  if (!state.box) state.detected = answer.boxes.map((b) => b.box);
  drawBoxes();
  drawChips();
  drawResults(answer.results);
  drawTimings(answer);
  if (answer.match === "none") {
    setStatus("nomatch", "No close match in the catalog. These are the nearest products.");
  } else if (!answer.results.length) {
    setStatus("empty", "No products found for this photo.");
  } else {
    const where = answer.category ? ` in ${answer.category.name}` : "";
    setStatus("done", `${answer.results.length} products found${where}.`);
  }
}

// --- boxes: show, pick, adjust, draw -----------------------------------------------------------

function activeBox() {
  return state.box || state.detected[0] || null;
}

function sameBox(a, b) {
  return a && b && a.every((v, i) => v === b[i]);
}

function drawBoxes() {
  const layer = $("boxes");
  layer.replaceChildren();
  if (!state.size) return;
  const active = activeBox();
  const boxes = state.detected.slice();
  if (state.box && !boxes.some((b) => sameBox(b, state.box))) boxes.push(state.box);
  // Larger boxes first, so a smaller box inside a larger one stays on top and can be tapped.
  boxes.sort((a, b) => (b[2] - b[0]) * (b[3] - b[1]) - (a[2] - a[0]) * (a[3] - a[1]));
  for (const box of boxes) {
    const element = boxElement(box);
    element.setAttribute("aria-label", "Search this object");
    if (sameBox(box, active)) {
      element.classList.add("active");
      element.setAttribute("aria-pressed", "true");
      for (const corner of ["nw", "ne", "sw", "se"]) {
        const handle = document.createElement("span");
        handle.className = `handle ${corner}`;
        handle.dataset.corner = corner;
        element.append(handle);
      }
    }
    element.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        pickBox(box);
      }
    });
    layer.append(element);
  }
}

function pickBox(box) {
  state.box = box;
  drawBoxes();
  search();
}

function boxElement(box) {
  const [width, height] = state.size;
  const element = document.createElement("div");
  element.className = "box";
  element.tabIndex = 0;
  element.setAttribute("role", "button");
  element.dataset.box = box.join(",");
  element.style.left = `${(100 * box[0]) / width}%`;
  element.style.top = `${(100 * box[1]) / height}%`;
  element.style.width = `${(100 * (box[2] - box[0])) / width}%`;
  element.style.height = `${(100 * (box[3] - box[1])) / height}%`;
  return element;
}

// Pointer position in photo pixels, clamped to the photo.
function photoPoint(event) {
  const rect = $("photo").getBoundingClientRect();
  const [width, height] = state.size;
  const x = Math.min(Math.max(event.clientX - rect.left, 0), rect.width);
  const y = Math.min(Math.max(event.clientY - rect.top, 0), rect.height);
  return [Math.round((x * width) / rect.width), Math.round((y * height) / rect.height)];
}

let drag = null; // {start, origin, fixed, picked, moved} while a pointer is down on the photo

function onPointerDown(event) {
  if (!state.size || event.button > 0) return;
  const corner = event.target.dataset.corner;
  const active = activeBox();
  let fixed = null; // the corner that stays put while the other follows the pointer
  if (corner && active) {
    fixed = [corner.includes("w") ? active[2] : active[0], corner.includes("n") ? active[3] : active[1]];
  }
  const picked = event.target.closest(".box");
  drag = { start: [event.clientX, event.clientY], origin: photoPoint(event), fixed, picked, moved: false };
  $("stage").setPointerCapture(event.pointerId);
}

function onPointerMove(event) {
  if (!drag) return;
  if (!drag.moved && Math.hypot(event.clientX - drag.start[0], event.clientY - drag.start[1]) < MIN_DRAG) return;
  drag.moved = true;
  const preview = boxElement(dragBox(event));
  preview.classList.add("drawing");
  const previous = $("boxes").querySelector(".drawing");
  if (previous) previous.replaceWith(preview); else $("boxes").append(preview);
}

function onPointerUp(event) {
  if (!drag) return;
  const box = dragBox(event);
  const { moved, picked } = drag;
  drag = null;
  if (!moved) { // a tap: on a box, search that box
    if (picked) pickBox(picked.dataset.box.split(",").map(Number));
    return;
  }
  if (box[2] - box[0] < 4 || box[3] - box[1] < 4) {
    drawBoxes();
    return;
  }
  pickBox(box);
}

function dragBox(event) {
  const [x, y] = photoPoint(event);
  const [fx, fy] = drag ? drag.fixed || drag.origin : [x, y];
  return [Math.min(x, fx), Math.min(y, fy), Math.max(x, fx), Math.max(y, fy)];
}

// --- categories ----------------------------------------------------------------------------

function drawChips() {
  const chips = $("chips");
  chips.replaceChildren();
  if (!state.categories.length) return;
  const predicted = state.answer && state.answer.category && !state.answer.category.forced
    ? state.answer.category.name : null;
  for (const name of [null, ...state.categories]) {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "chip";
    chip.dataset.category = name || "";
    chip.textContent = name === null ? "Any category" : name;
    if (name && name === predicted) {
      chip.classList.add("predicted");
      chip.title = "The category this photo looks like";
    }
    chip.setAttribute("aria-pressed", String(state.category === name));
    chip.addEventListener("click", () => {
      state.category = name;
      drawChips();
      search();
    });
    chips.append(chip);
  }
  chips.hidden = false;
}

async function loadCategories() {
  try {
    const response = await fetch("stats");
    if (response.ok) state.categories = (await response.json()).categories || [];
  } catch (error) {
    state.categories = [];
  }
  drawChips();
}

// --- results ---------------------------------------------------------------------------------

function formatPrice(price) {
  const value = Number(price);
  return Number.isFinite(value) ? value.toFixed(2) : String(price);
}

function drawResults(hits) {
  const list = $("results");
  list.replaceChildren();
  list.classList.toggle("weak", state.answer && state.answer.match === "none");
  for (const hit of hits) {
    const item = document.createElement("li");
    item.className = "result";
    item.dataset.itemId = hit.item_id;

    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    const image = document.createElement("img");
    image.src = hit.image;
    image.alt = hit.title || hit.item_id;
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = hit.title || hit.item_id;
    const meta = document.createElement("span");
    meta.className = "meta";
    const price = document.createElement("span");
    price.className = "price";
    price.textContent = hit.price !== undefined && hit.price !== null ? formatPrice(hit.price) : "";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `score ${Number(hit.score).toFixed(2)}`;
    meta.append(price, score);
    if (hit.also && hit.also.length) {
      const sellers = document.createElement("span");
      sellers.className = "sellers";
      sellers.textContent = `${hit.also.length + 1} sellers`;
      sellers.title = [hit.item_id, ...hit.also].join(", ");
      meta.append(sellers);
    }
    if (hit.close === false) item.classList.add("far");
    open.append(image, title, meta);
    open.addEventListener("click", () => {
      logClick(hit.item_id);
      openItem(hit);
    });

    const more = document.createElement("button");
    more.type = "button";
    more.className = "more";
    more.textContent = "More like this";
    more.addEventListener("click", () => moreLike(hit));

    item.append(open, more);
    list.append(item);
  }
}

function logClick(itemId) {
  const answer = state.answer;
  if (!answer) return;
  const body = {
    query_id: answer.query_id,
    box: activeBox(),
    shown: answer.results.map((hit) => hit.item_id),
    clicked: [itemId],
  };
  fetch("clicks", {
    method: "POST", keepalive: true, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  }).catch(() => {}); // a lost click is a lost training example, never a broken page
}

function openItem(hit) {
  $("item-image").src = hit.image;
  $("item-image").alt = hit.title || hit.item_id;
  $("item-title").textContent = hit.title || hit.item_id;
  const parts = [hit.category, hit.price !== undefined && hit.price !== null ? formatPrice(hit.price) : null, hit.item_id];
  $("item-meta").textContent = parts.filter(Boolean).join(" · ");
  const link = $("item-link");
  const safe = typeof hit.url === "string" && /^https?:\/\//i.test(hit.url);
  link.hidden = !safe;
  if (safe) link.href = hit.url; else link.removeAttribute("href");
  $("item").showModal();
}

async function moreLike(hit) {
  setStatus("loading", "Searching…");
  try {
    const response = await fetch(hit.image);
    if (!response.ok) throw new Error(`the image answered ${response.status}`);
    setPhoto(await response.blob());
    window.scrollTo({ top: 0, behavior: "smooth" });
  } catch (error) {
    setStatus("error", `Search failed: ${error.message}`);
  }
}

// --- timings ---------------------------------------------------------------------------------

function drawTimings(answer) {
  const rows = [];
  for (const [stage, ms] of Object.entries(answer.timing_ms || {})) rows.push([stage, ms]);
  if (answer.batch) {
    rows.push(["waiting for batch", answer.batch.queued_ms]);
    rows.push(["batch size", answer.batch.size, ""]);
  }
  rows.push(["round trip", answer.roundTripMs]);
  const body = $("timing-rows");
  body.replaceChildren();
  for (const [name, value, unit = " ms"] of rows) {
    const row = document.createElement("tr");
    const label = document.createElement("th");
    label.textContent = name;
    const cell = document.createElement("td");
    cell.textContent = unit ? `${Number(value).toFixed(1)}${unit}` : String(value);
    row.append(label, cell);
    body.append(row);
  }
  $("timings").hidden = false;
}

// --- wiring ----------------------------------------------------------------------------------

function start() {
  for (const id of ["file", "camera"]) {
    $(id).addEventListener("change", (event) => {
      setPhoto(event.target.files[0]);
      event.target.value = "";
    });
  }
  const drop = $("drop");
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) drop.classList.remove("over");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    setPhoto(firstImage(event.dataTransfer && event.dataTransfer.files));
  });
  document.addEventListener("paste", (event) => {
    const file = firstImage(event.clipboardData && event.clipboardData.items);
    if (file) {
      event.preventDefault();
      setPhoto(file);
    }
  });
  const stage = $("stage");
  stage.addEventListener("pointerdown", onPointerDown);
  stage.addEventListener("pointermove", onPointerMove);
  stage.addEventListener("pointerup", onPointerUp);
  stage.addEventListener("pointercancel", () => { drag = null; drawBoxes(); });
  $("photo").addEventListener("dragstart", (event) => event.preventDefault());
  loadCategories();
}

start();
