// The dashboard: one GET /api/dashboard for everything shown, the API for searches and writes. No external
// libraries. Reads need no token unless the server says so (GET /api/auth); a token typed into the write form
// is kept for this tab only (sessionStorage) and sent as a bearer header.
"use strict";
const $ = (id) => document.getElementById(id);
let auth = {writes_need_token: false, reads_need_token: false};
const token = () => $("token").value.trim() || sessionStorage.getItem("lookalike-token") || "";

function api(url, opts = {}) {
  const t = token();
  return fetch(url, t ? {...opts, headers: {...(opts.headers || {}), Authorization: `Bearer ${t}`}} : opts);
}

// With --auth-reads an <img src> cannot carry the token, so images are fetched with it.
function loadImages(root) {
  if (!auth.reads_need_token) return;
  root.querySelectorAll("img[data-src]").forEach(async (img) => {
    const r = await api(img.dataset.src);
    if (r.ok) img.src = URL.createObjectURL(await r.blob());
  });
}

function image(url, attrs = {}) {
  return el("img", {...attrs, ...(auth.reads_need_token ? {"data-src": url} : {src: url})});
}
const fmt = (v, d = 4) => (v === null || v === undefined || Number.isNaN(v)) ? "–" : (typeof v === "number" ? +v.toFixed(d) : v);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function cards(kpi) {
  const t = kpi.training || {}, test = t.test_json_to_image || {}, sim = t.similarity || {};
  const h = (kpi.embedding_health || {}).catalogue || {}, q = (kpi.embedding_health || {}).query_norms || {};
  const items = [
    ["catalogue size", kpi.catalogue.size, "catalogue-size"], ["new products", kpi.catalogue.new, "catalogue-new"],
    ["best epoch", t.best_epoch], [t.val_metric_name || "val metric", fmt(t.val_metric)],
    ["test top-1 (hit@1)", fmt(test["hit@1"])], ["test top-5 (hit@5)", fmt(test["hit@5"])], ["test MRR", fmt(test.mrr)],
    ["positive similarity", fmt(sim.positive_mean)], ["negative similarity", fmt(sim.negative_mean)],
    ["mean top-1 similarity", fmt(kpi.mean_top1_similarity)], ["intra-list diversity", fmt(kpi.mean_intra_list_diversity)],
    ["catalogue coverage", fmt(kpi.catalogue_coverage)], ["gallery norm (mean)", fmt(h.norm_mean)],
    ["variance / dim", fmt(h.variance_per_dim_mean)], ["query norm (mean)", fmt(q.mean)],
  ];
  $("kpi-cards").replaceChildren(...items.map(([k, v, id]) => el("div", {class: "card", ...(id ? {id} : {})},
    el("div", {class: "v"}, v ?? "–"), el("div", {class: "k"}, k))));
  $("categories").replaceChildren(el("tr", {}, el("th", {}, "category"), el("th", {}, "all"), el("th", {}, "new")),
    ...Object.entries(kpi.catalogue.per_category).map(([c, n]) =>
      el("tr", {}, el("td", {}, c === "" ? "(none)" : c), el("td", {}, n),
        el("td", {}, kpi.catalogue.new_per_category[c] || 0))));
  $("latency").replaceChildren(el("tr", {}, ...["endpoint", "requests", "p50 ms", "p95 ms", "p99 ms"].map(x => el("th", {}, x))),
    ...Object.entries(kpi.requests).map(([ep, r]) => el("tr", {}, el("td", {}, ep), el("td", {}, r.requests),
      el("td", {}, r.p50_ms), el("td", {}, r.p95_ms), el("td", {}, r.p99_ms))));
  const on = kpi.online || {}, cov = on.new_collection || {};
  const px = on.best_seller_proxy;
  $("online-coverage").textContent = `${on.events || 0} events; new collection shown: ${cov.shown || 0} of ` +
    `${cov.size ?? "–"} (coverage ${fmt(cov.coverage)})` + (px ? `; best-seller proxy vs units sold ` +
    `(last ${px.window_days} days, ${px.n_products} products): Spearman ${fmt(px.spearman)}` : "");
  const cols = ["impressions", "clicks", "carts", "purchases", "lists_served", "ctr", "ctr@10", "purchase_rate"];
  const rows = [];
  for (const [group, label] of [["per_endpoint", "endpoint"], ["per_variant", "variant"]])
    for (const [key, r] of Object.entries(on[group] || {}))
      rows.push(el("tr", {}, el("td", {}, `${label} ${key}`), ...cols.map(c => el("td", {}, r[c] ?? "–"))));
  $("online").replaceChildren(el("tr", {}, ...["", ...cols].map(x => el("th", {}, x))), ...rows);
}

function chart(canvas, history, series) {
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, pad = 34;
  ctx.clearRect(0, 0, W, H);
  const pts = series.map(([key]) => history.map(r => r[key]).filter(v => typeof v === "number"));
  const all = pts.flat();
  if (!all.length) { ctx.fillText("no training history found next to the checkpoint", pad, H / 2); return; }
  let lo = Math.min(...all), hi = Math.max(...all);
  if (hi === lo) { hi += 1; lo -= 1; }
  const n = Math.max(2, history.length);
  const x = i => pad + (W - 2 * pad) * i / (n - 1), y = v => H - pad - (H - 2 * pad) * (v - lo) / (hi - lo);
  ctx.strokeStyle = "#999"; ctx.strokeRect(pad, pad, W - 2 * pad, H - 2 * pad);
  ctx.fillStyle = "#333"; ctx.fillText(fmt(hi, 3), 2, pad + 4); ctx.fillText(fmt(lo, 3), 2, H - pad);
  ctx.fillText("epoch", W / 2, H - 8);
  // a series without figures (e.g. no validation loss in an older run) is neither drawn nor named
  series.filter((_, s) => pts[s].length).forEach(([key, colour, label], s) => {
    ctx.strokeStyle = colour; ctx.fillStyle = colour; ctx.beginPath();
    let started = false;
    history.forEach((r, i) => { if (typeof r[key] === "number") { ctx[started ? "lineTo" : "moveTo"](x(i), y(r[key])); started = true; ctx.fillRect(x(i) - 2, y(r[key]) - 2, 4, 4); } });
    ctx.stroke(); ctx.fillText(label || key, pad + 6 + 150 * s, pad - 8);
  });
}

function grid(items) {
  return el("div", {class: "grid"}, ...items.map(h => el("div", {class: "hit"},
    image(h.image_url, {alt: h.id, loading: "lazy"}),
    el("div", {}, `${h.id} · ${fmt(h.score, 3)}`),
    el("div", {}, (h.attributes && (h.attributes.name || h.attributes.articleType)) || ""))));
}

function tableOf(obj, prefix = "") {
  const rows = [];
  for (const [k, v] of Object.entries(obj || {})) {
    if (v && typeof v === "object" && !Array.isArray(v)) rows.push(...tableOf(v, prefix + k + "."));
    else rows.push(el("tr", {}, el("td", {}, prefix + k), el("td", {}, JSON.stringify(v))));
  }
  return rows;
}

// The study behind the served model (read by the server once, at start-up), when it came from `lookalike tune`.
function tuning(t) {
  if (!t) { $("tuning").replaceChildren(el("p", {}, "the served model did not come from lookalike tune")); return; }
  const tr = t.trials, ep = t.epochs, st = t.study;
  const models = [["default", t.default], ["best", t.best], ...(t.ensemble && t.ensemble.built ? [["ensemble", t.ensemble]] : [])];
  const keys = [...new Set(models.flatMap(([, m]) => Object.keys(m.test || {})))];
  const row = (label, f) => el("tr", {}, el("td", {}, label), ...models.map(([, m]) => el("td", {}, fmt(f(m)))));
  $("tuning").replaceChildren(
    el("p", {id: "tuning-budget"}, `study ${st.name} (${st.engine}, pruner ${st.pruner}): ${tr.trials} trials, ` +
      `${tr.complete} complete, ${tr.pruned} pruned, ${tr.fail} failed; epochs run ${ep.epochs_run} of ` +
      `${ep.epochs_planned} planned, pruning saved ${ep.epochs_saved_by_pruning} ` +
      `(${fmt(100 * ep.epochs_saved_by_pruning_share, 1)}%); trials ${fmt(st.trial_seconds, 0)} s in all. ` +
      `Served: the ${t.served_as} model.`),
    el("p", {id: "tuning-best"}, `best trial ${t.best_trial.number} (validation ${fmt(t.best_trial.validation)}, ` +
      `chosen among ${tr.complete}: optimistic): ${JSON.stringify(t.best_trial.params)}`),
    ...(t.ensemble && !t.ensemble.built ? [el("p", {}, `ensemble not built: ${t.ensemble.reason}`)] : []),
    el("table", {id: "tuning-figures"},
      el("tr", {}, el("th", {}, ""), ...models.map(([name, m]) => el("th", {},
        name === "ensemble" ? `ensemble of trials ${m.members.join(", ")}` : name))),
      row("validation", m => m.validation),
      ...keys.map(k => row(`test ${k}`, m => (m.test || {})[k]))));
}

async function refresh() {
  const r = await api("/api/dashboard");
  if (r.status === 401) { $("status").textContent = "this server needs a read token: enter it in the token field"; return; }
  if (!r.ok) { $("status").textContent = `dashboard data failed: ${r.status}`; return; }
  const d = await r.json();
  cards(d.kpi);
  chart($("loss-chart"), d.loss_curve, [["attribute_loss", "#d62728", "train loss"], ["val_loss", "#ff7f0e", "validation loss"], ["text_loss", "#2ca02c", "train text loss"]]);
  chart($("lr-chart"), d.loss_curve, [["lr", "#8c564b", "learning rate"]]);
  chart($("metric-chart"), d.loss_curve, [["val_metric", "#9467bd"], ["positive_similarity", "#2ca02c"], ["negative_similarity", "#ff7f0e"]]);
  $("recent").replaceChildren(...d.top_k_images.map(l => el("div", {}, el("h3", {}, l.query), grid(l.items))));
  $("hyperparams").replaceChildren(...tableOf(d.hyperparams));
  $("augmented").replaceChildren(...d.augmented_samples.map(s => el("div", {class: "row"},
    image(s.image_url, {alt: s.id, style: "max-width:60px;flex:0 0 60px"}),
    el("div", {},
      el("pre", {}, `original:  ${JSON.stringify(s.original)}\naugmented: ${JSON.stringify(s.augmented)}\ndropped: ${s.dropped.join(", ") || "none"}`),
      s.view_urls.length
        ? el("div", {class: "views"}, ...s.view_urls.map((u, v) => image(u, {alt: `${s.id} view ${v}`, title: `view ${v} of ${s.image_views}`})))
        : el("div", {class: "k"}, "no image views: the model trained without augment.image_views")))));
  tuning(d.tuning);
  $("status").textContent = `${d.kpi.catalogue.size} products · updated ${new Date().toLocaleTimeString()}`;
  loadImages(document);
}

async function show(response) {
  const body = await response.json();
  if (!response.ok) {
    const msg = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    $("search-error").textContent = `${response.status}: ${msg}`;
    $("search-results").replaceChildren();
    return;
  }
  $("search-error").textContent = "";
  // A photo's predicted attributes (POST … tags=true): value and calibrated confidence per field.
  const tags = body.tags ? el("div", {id: "photo-tags"}, "the photo's tags: ",
    ...Object.entries(body.tags).map(([f, t]) => el("span", {class: "tag", title: (t.alternatives || [])
      .map(([v, p]) => `${v} ${fmt(p, 2)}`).join(", ")},
      `${f}: ${Array.isArray(t.value) ? t.value.join(", ") : t.value} (${fmt(t.confidence, 2)}) `))) : "";
  $("search-results").replaceChildren(el("div", {id: "result-summary"},
    `${body.items.length} results · intra-list diversity ${fmt(body.intra_list_diversity, 3)}`), tags, grid(body.items));
  loadImages($("search-results"));
  refresh();
}

$("search-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("search-input").value.trim(), form = new FormData();
  let isJson = false;
  try { isJson = typeof JSON.parse(text) === "object"; } catch (e) { isJson = false; }
  form.append(isJson ? "attributes" : "text", text);
  form.append("k", $("search-k").value);
  form.append("diversity", $("search-div").value);
  await show(await api("/api/search", {method: "POST", body: form}));
});

$("upload-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("upload-input").files[0];
  if (!file) { $("search-error").textContent = "choose an image first"; return; }
  const form = new FormData();
  form.append("image", file);
  form.append("k", $("search-k").value);
  form.append("tags", "true");
  await show(await api("/api/recommend/customer_input", {method: "POST", body: form}));
});

async function write(request, done) {
  $("write-result").textContent = ""; $("write-error").textContent = "";
  const r = await request();
  const body = await r.json();
  if (r.ok) {
    if (token()) sessionStorage.setItem("lookalike-token", token());
    $("write-result").textContent = done(body);
    refresh();
    return;
  }
  const msg = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  const hint = r.status === 401 ? " — this server needs a write token: paste it in the token field"
    : r.status === 403 ? " — this token may not write" : "";
  $("write-error").textContent = `${r.status}: ${msg}${hint}`;
  if (r.status === 401) $("token").focus();
}

$("write-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData(), file = $("write-image").files[0];
  form.append("product_id", $("write-id").value.trim());
  form.append("attributes", $("write-attributes").value);
  if (file) form.append("image", file);
  await write(() => api("/api/items", {method: "POST", body: form}), b => `added ${b.id}`);
});

$("delete-button").addEventListener("click", async () => {
  const id = encodeURIComponent($("write-id").value.trim());
  await write(() => api(`/api/items/${id}`, {method: "DELETE"}), b => `deleted ${b.deleted}`);
});

(async () => {
  const r = await fetch("/api/auth");
  if (r.ok) auth = await r.json();
  refresh();
})();
setInterval(refresh, 15000);
