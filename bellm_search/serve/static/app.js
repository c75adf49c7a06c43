// bellm-search review page: plain script, no build step. Every data call sends the API key
// (kept in sessionStorage) as the X-API-Key header, never in a URL.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { offset: 0, limit: 20, total: 0 };

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function say(message, isError) {
  const s = $("status");
  s.textContent = message || "";
  s.className = isError ? "error" : "";
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  const key = sessionStorage.getItem("bellm-api-key");
  if (key) opts.headers["X-API-Key"] = key;
  if (opts.json !== undefined) {
    opts.method = opts.method || "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(opts.json);
  }
  const res = await fetch(path, opts);
  if (res.status === 401) {
    say("This server needs its API key: paste it above and press \"Use key\".", true);
    throw new Error("unauthorised");
  }
  if (!res.ok) {
    let message = res.status + " " + res.statusText;
    try { message = (await res.json()).error || message; } catch (e) { /* not JSON */ }
    say(message, true);
    throw new Error(message);
  }
  return opts.raw ? res : res.json();
}

function fmt(x) { return x === null || x === undefined ? "–" : Number(x).toFixed(3); }

// ------------------------------------------------------------------ tabs, key
function show(view) {
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== "view-" + view; });
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t.dataset.view === view));
  if (view === "dedup") loadFiles().catch(() => {});
  if (view === "label") refreshCount().catch(() => {});
}

async function loadInfo() {
  const info = await api("/info");
  $("collection").textContent = (info.path || info.name || "") + " · " + info.documents + " documents";
  say("");
}

// ------------------------------------------------------------------ search
function parseWhere(text) {
  const where = {};
  text.trim().split(/\s+/).filter(Boolean).forEach((part) => {
    const at = part.indexOf("=");
    if (at < 1) throw new Error("filter " + JSON.stringify(part) + " is not key=value");
    where[part.slice(0, at)] = part.slice(at + 1);
  });
  return Object.keys(where).length ? where : null;
}

function metaLine(meta) {
  return Object.entries(meta || {}).map(([k, v]) => k + "=" + (typeof v === "string" ? v : JSON.stringify(v))).join("  ");
}

async function search(event) {
  event.preventDefault();
  let where;
  try { where = parseWhere($("where").value); } catch (e) { say(e.message, true); return; }
  const body = { text: $("q").value, k: Number($("k").value) || 10, where: where };
  const data = await api("/query", { json: body });
  const list = $("results");
  list.replaceChildren();
  data.results[0].forEach((hit) => {
    const li = el("li", "hit");
    li.append(el("span", "score", fmt(hit.score)), el("span", "id", hit.id), el("div", "text", hit.text),
              el("div", "meta", metaLine(hit.metadata)));
    list.append(li);
  });
  say(data.results[0].length + " results");
}

// ------------------------------------------------------------------ dedup
function keepPolicy() {
  const v = $("keep").value;
  return v === "field" ? "field:" + ($("keep-field").value.trim() || "likes") : v;
}

async function loadFiles() {
  const data = await api("/review/files");
  const sel = $("files");
  const first = sel.options[0];
  sel.replaceChildren(first);
  data.files.forEach((f) => { const o = el("option", "", f); o.value = f; sel.append(o); });
}

async function runDedup(event) {
  event.preventDefault();
  say("running dedup…");
  const t = $("threshold").value;
  const summary = await api("/review/dedup", { json: { threshold: t === "" ? null : Number(t), k: Number($("dedup-k").value) || 10, keep: keepPolicy() } });
  state.offset = 0;
  showSummary(summary);
  await loadClusters();
}

async function loadFile() {
  if (!$("files").value) { say("choose a clusters file first", true); return; }
  const summary = await api("/review/load", { json: { file: $("files").value, keep: keepPolicy() } });
  state.offset = 0;
  showSummary(summary);
  await loadClusters();
}

function showSummary(s) {
  state.total = s.clusters;
  $("dedup-summary").textContent = s.origin + " — " + s.clusters + " clusters, " + s.removed + " of " +
    s.documents + " documents to remove (scores: " + s.score + ")" + (s.warning ? " — " + s.warning : "");
}

function pairTable(pairs) {
  const table = el("table", "pairs");
  pairs.forEach((p) => {
    const tr = el("tr");
    const feats = p.features ? Object.entries(p.features).map(([k, v]) => k + " " + fmt(v)).join(", ") : "linked at ingest";
    tr.append(el("td", "", p.a + " ↔ " + p.b), el("td", "score", fmt(p.score)), el("td", "features", feats));
    table.append(tr);
  });
  return table;
}

function renderCluster(c) {
  const box = el("article", "cluster");
  box.dataset.members = c.members.map((m) => m.id).join(" ");
  box.append(el("h3", "", "cluster of " + c.size + " · weakest link " + fmt(c.min_score) + " · keep " + c.keep));
  const row = el("div", "members");
  c.members.forEach((m) => {
    const card = el("div", m.kept ? "member kept" : "member");
    card.dataset.id = m.id;
    card.append(el("div", "id", (m.kept ? "KEEP " : "remove ") + m.id), el("div", "text", m.text),
                el("div", "meta", metaLine(m.metadata)));
    row.append(card);
  });
  box.append(row, pairTable(c.pairs));
  return box;
}

async function loadClusters() {
  const q = new URLSearchParams({ sort: $("sort").value, keep: keepPolicy(), offset: state.offset, limit: state.limit });
  const data = await api("/review/clusters?" + q);
  showSummary(data);
  const holder = $("clusters");
  holder.replaceChildren(...data.page.map(renderCluster));
  const last = Math.min(state.offset + state.limit, state.total);
  $("page-info").textContent = " " + (state.total ? state.offset + 1 : 0) + "–" + last + " of " + state.total + " ";
  say("");
}

function page(step) {
  const next = state.offset + step * state.limit;
  if (next < 0 || next >= state.total) return;
  state.offset = next;
  loadClusters().catch(() => {});
}

async function download(kind) {
  const q = new URLSearchParams({ kind: kind, keep: keepPolicy() });
  const res = await api("/review/export?" + q, { raw: true });
  const blob = await res.blob();
  const a = el("a");
  a.href = URL.createObjectURL(blob);
  a.download = kind + ".txt";
  document.body.append(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  say("downloaded " + kind + ".txt");
}

// ------------------------------------------------------------------ labelling
async function refreshCount() {
  const c = await api("/review/labels");
  $("label-count").textContent = "labels: " + c.labels + " (" + c.duplicates + " duplicate, " +
    c.not_duplicates + " not, " + c.skipped + " skipped)";
}

async function loadPairs() {
  say("finding pairs near the threshold…");
  const q = new URLSearchParams({ n: 10 });
  const t = $("label-threshold").value || $("threshold").value;  // else the dedup view's threshold
  if (t !== "") q.set("threshold", t);
  const data = await api("/review/pairs?" + q);
  $("pairs").replaceChildren(...data.pairs.map(renderPair));
  say(data.pairs.length ? "" : "no unlabelled candidate pairs");
}

function renderPair(p) {
  const box = el("article", "pair");
  box.dataset.a = p.a;
  box.dataset.b = p.b;
  const texts = el("div", "members");
  [[p.a, p.text_a], [p.b, p.text_b]].forEach(([id, text]) => {
    const card = el("div", "member");
    card.append(el("div", "id", id), el("div", "text", text));
    texts.append(card);
  });
  const feats = Object.entries(p.features || {}).filter(([k]) => k !== "cosine").map(([k, v]) => k + " " + fmt(v)).join(", ");
  const info = el("p", "muted", "P(duplicate) " + fmt(p.probability) + " · cosine " + fmt(p.cosine) + (feats ? " · " + feats : ""));
  const buttons = el("div", "answers");
  [["duplicate", true], ["not duplicate", false], ["skip", null]].forEach(([name, value]) => {
    const b = el("button", "answer", name);
    b.type = "button";
    b.dataset.answer = String(value);
    b.addEventListener("click", () => answer(box, p, value).catch(() => {}));
    buttons.append(b);
  });
  box.append(texts, info, buttons);
  return box;
}

async function answer(box, p, value) {
  const c = await api("/review/labels", { json: { a: p.a, b: p.b, duplicate: value, probability: p.probability, cosine: p.cosine } });
  box.classList.add("answered");
  box.querySelectorAll("button").forEach((b) => { b.disabled = true; });
  box.append(el("p", "done", "saved: " + (value === null ? "skipped" : value ? "duplicate" : "not duplicate")));
  $("label-count").textContent = "labels: " + c.labels + " (" + c.duplicates + " duplicate, " +
    c.not_duplicates + " not, " + c.skipped + " skipped)";
}

async function calibrate() {
  say("calibrating…");
  const r = await api("/review/calibrate", { method: "POST" });
  $("calibration").textContent = "calibrated from " + r.labels + " labels: P >= " + fmt(r.threshold) +
    ", cross-validated F1 " + fmt(r.cv && r.cv.f1) + " → " + r.path;
  say("calibration written");
}

// ------------------------------------------------------------------ wiring
function init() {
  const saved = sessionStorage.getItem("bellm-api-key");
  if (saved) $("api-key").value = saved;
  $("save-key").addEventListener("click", () => {
    sessionStorage.setItem("bellm-api-key", $("api-key").value.trim());
    loadInfo().catch(() => {});
  });
  document.querySelectorAll(".tab").forEach((t) => t.addEventListener("click", () => show(t.dataset.view)));
  $("search-form").addEventListener("submit", (e) => search(e).catch(() => {}));
  $("dedup-form").addEventListener("submit", (e) => runDedup(e).catch(() => {}));
  $("load-file").addEventListener("click", () => loadFile().catch(() => {}));
  $("sort").addEventListener("change", () => { state.offset = 0; loadClusters().catch(() => {}); });
  $("keep").addEventListener("change", () => {
    $("keep-field").hidden = $("keep").value !== "field";
    if (state.total) loadClusters().catch(() => {});
  });
  $("keep-field").addEventListener("change", () => { if (state.total) loadClusters().catch(() => {}); });
  $("prev").addEventListener("click", () => page(-1));
  $("next").addEventListener("click", () => page(1));
  $("export-remove").addEventListener("click", () => download("remove").catch(() => {}));
  $("export-keep").addEventListener("click", () => download("keep").catch(() => {}));
  $("more-pairs").addEventListener("click", () => loadPairs().catch(() => {}));
  $("calibrate").addEventListener("click", () => calibrate().catch(() => {}));
  loadInfo().catch(() => {});
}

init();
