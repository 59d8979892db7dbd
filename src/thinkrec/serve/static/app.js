// thinkrec web page: search titles, build a history (or load a user's), show recommendations (and per-step lists).
"use strict";

const $ = (id) => document.getElementById(id);
// user: a user of the dataset whose real history is shown (null: the history built by hand)
const state = { history: [], user: null, heldOut: null, model: null, searchTimer: null, requestId: 0 };

function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value;
  if (cls) el.className = cls;
  return el;
}

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function loadModel() {
  const health = await getJSON("/health");
  state.model = health.model;
  const m = health.model;
  $("model-info").textContent = `${m.kind} on ${m.dataset}: ${m.n_items} items, history up to ${m.max_len}` +
    (m.max_reasoning_steps > 0 ? `, ${m.reasoning_steps} reasoning steps` : "");
  if (m.max_reasoning_steps > 0) {
    $("steps-label").hidden = false;
    $("steps").max = m.max_reasoning_steps;
    $("steps").value = m.reasoning_steps;
  }
}

async function search() {
  const q = $("search").value.trim();
  const list = $("search-results");
  if (!q) { list.replaceChildren(); return; }
  try {
    const body = await getJSON(`/items/search?q=${encodeURIComponent(q)}&limit=20`);
    list.replaceChildren(...body.items.map((it) => {
      const li = text("li", `${it.title || "(no title)"} `);
      li.appendChild(text("span", `#${it.item}`, "muted"));
      li.dataset.item = it.item;
      li.title = "add to history";
      li.addEventListener("click", () => addItem(it));
      return li;
    }));
    if (!body.items.length) list.replaceChildren(text("li", "no match", "muted"));
  } catch (err) { showError(err.message); }
}

function addItem(it) {
  forgetUser();  // editing a user's history makes it a hand-built one
  state.history.push({ item: it.item, title: it.title });
  renderHistory();
  recommend();
}

function forgetUser() {
  state.user = null;
  state.heldOut = null;
}

function renderHistory() {
  const ol = $("history");
  ol.replaceChildren(...state.history.map((it, index) => {
    const li = text("li", it.title || String(it.item));
    li.title = "remove";
    li.addEventListener("click", () => { forgetUser(); state.history.splice(index, 1); renderHistory(); recommend(); });
    return li;
  }));
  $("history-empty").hidden = state.history.length > 0 || state.user !== null;
  const held = $("held-out");
  held.hidden = !state.heldOut;
  held.replaceChildren();
  if (state.heldOut) {
    held.append("then, held out: ", text("span", state.heldOut.title || String(state.heldOut.item), "held-out"));
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function recommend() {
  const tbody = $("recs").querySelector("tbody");
  if (!state.history.length && state.user === null) {
    tbody.replaceChildren(); $("steps-view").hidden = true; $("reasoning-view").hidden = true; return;
  }
  const request = {
    k: Math.max(1, Math.min(1000, parseInt($("k").value, 10) || 10)),
    exclude_seen: $("exclude-seen").checked,
  };
  if (state.user !== null) request.user = state.user;
  else request.history = state.history.map((it) => it.item);
  if (state.model && state.model.max_reasoning_steps > 0) {
    request.reasoning_steps = Math.max(0, parseInt($("steps").value, 10) || 0);
  }
  const id = ++state.requestId;
  try {
    const body = await getJSON("/recommend", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request),
    });
    if (id !== state.requestId) return;  // a newer request is on its way
    showError("");
    if (body.history) {
      state.history = body.history;
      state.heldOut = body.held_out;
      renderHistory();
    }
    $("held-out-note").hidden = !body.held_out;
    tbody.replaceChildren(...body.items.map((it, rank) => {
      const tr = document.createElement("tr");
      tr.append(text("td", rank + 1), text("td", it.item), text("td", it.title), text("td", it.score.toFixed(3), "score"));
      if (it.held_out) tr.classList.add("held-out");
      tr.title = "add to history";
      tr.addEventListener("click", () => addItem(it));
      return tr;
    }));
    renderSteps(body.steps);
    $("reasoning").textContent = body.reasoning || "";
    $("reasoning-view").hidden = !body.reasoning;
  } catch (err) { if (id === state.requestId) showError(err.message); }
}

function renderSteps(steps) {
  const view = $("steps-view");
  if (!steps || steps.length < 2) { view.hidden = true; return; }
  view.hidden = false;
  $("steps-grid").replaceChildren(...steps.map((list, s) => {
    const div = document.createElement("div");
    div.className = "step";
    div.appendChild(text("strong", `step ${s}`));
    const before = s > 0 ? steps[s - 1].map((it) => String(it.item)) : null;
    const ol = document.createElement("ol");
    list.forEach((it, rank) => {
      const li = text("li", it.title || String(it.item));
      if (it.held_out) li.classList.add("held-out");
      if (before) {
        const was = before.indexOf(String(it.item));
        if (was < 0) li.classList.add("new");
        else if (was > rank) li.appendChild(text("span", ` ↑${was - rank}`, "up"));
        else if (was < rank) li.appendChild(text("span", ` ↓${rank - was}`, "down"));
      }
      ol.appendChild(li);
    });
    div.appendChild(ol);
    return div;
  }));
}

$("search").addEventListener("input", () => {
  clearTimeout(state.searchTimer);
  state.searchTimer = setTimeout(search, 200);
});
$("k").addEventListener("change", recommend);
$("steps").addEventListener("change", recommend);
$("exclude-seen").addEventListener("change", recommend);
$("clear").addEventListener("click", () => { forgetUser(); state.history = []; renderHistory(); recommend(); });
$("user-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const user = $("user").value.trim();
  if (!user) return;
  state.user = user;
  state.history = [];
  state.heldOut = null;
  renderHistory();
  recommend();
});
loadModel().catch((err) => showError(`cannot reach the server: ${err.message}`));
