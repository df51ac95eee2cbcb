// tiergate SLO dashboard: polls /v1/slo every second and draws plain SVG charts (no libraries).
// Every figure drawn is also written into data-* attributes, so a headless browser can read them back.
"use strict";

const POLL_MS = 1000;
const W = 360, H = 130, PAD_L = 50, PAD_B = 16, PAD_T = 8;
let updates = 0;

function fmt(v, digits = 1) {
  if (v === null || v === undefined) return "–";
  if (Math.abs(v) >= 1000) return v.toLocaleString("en", { maximumFractionDigits: 0 });
  return Number(v).toFixed(digits);
}
function pct(v, digits = 2) { return v === null || v === undefined ? "–" : (100 * v).toFixed(digits) + "%"; }
function ms(v) {
  if (v === null || v === undefined) return "–";
  if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + " s";
  return Number(v).toFixed(v < 10 ? 2 : v < 100 ? 1 : 0) + " ms";
}

function polyline(values, x, y, cls, color) {
  // One <polyline> per run of non-null points.
  let out = "", run = [];
  const flush = () => {
    if (run.length) out += `<polyline class="${cls}" fill="none" stroke="${color}" stroke-width="1.8" points="${run.join(" ")}"/>`;
    run = [];
  };
  values.forEach((v, i) => { if (v === null) flush(); else run.push(`${x(i).toFixed(1)},${y(v).toFixed(1)}`); });
  flush();
  return out;
}

function latencyChart(series, sloMs) {
  const n = series.p99_ms.length;
  const seen = series.p99_ms.filter(v => v !== null);
  const low = series.p50_ms.filter(v => v !== null && v > 0);
  // A log scale, whole decades: a 10 ms and a 30 s objective both read well next to their data.
  const bottom = 10 ** Math.floor(Math.log10(Math.min(sloMs / 10, ...low)));
  const top = 10 ** Math.ceil(Math.log10(Math.max(sloMs * 1.5, ...seen)));
  const span = Math.log10(top / bottom);
  const x = i => PAD_L + (i * (W - PAD_L - 4)) / Math.max(1, n - 1);
  const y = v => PAD_T + (H - PAD_T - PAD_B) * (1 - Math.log10(Math.min(Math.max(v, bottom), top) / bottom) / span);
  const sloY = y(sloMs).toFixed(1);
  let svg = `<svg class="latency" viewBox="0 0 ${W} ${H}" data-points="${seen.length}" data-top-ms="${top}">`;
  const step = Math.max(1, Math.ceil(span / 4));
  for (let d = 0; d <= span; d += step) {
    const v = bottom * 10 ** d, yy = y(v).toFixed(1);
    svg += `<line x1="${PAD_L}" x2="${W - 4}" y1="${yy}" y2="${yy}" stroke="#222c36"/><text x="${PAD_L - 4}" y="${yy}" dy="3" text-anchor="end">${v >= 1000 ? +(v / 1000).toPrecision(3) + "s" : +v.toPrecision(3) + "ms"}</text>`;
  }
  svg += `<line class="slo" x1="${PAD_L}" x2="${W - 4}" y1="${sloY}" y2="${sloY}" stroke="var(--slo)" stroke-dasharray="5 4"/>`;
  svg += `<text class="slo-label" x="${PAD_L + 4}" y="${sloY}" dy="-4" style="fill: var(--slo)">SLO ${ms(sloMs)}</text>`;
  svg += polyline(series.p50_ms, x, y, "p50", "var(--p50)") + polyline(series.p99_ms, x, y, "p99", "var(--p99)");
  svg += `<text x="${PAD_L}" y="${H - 3}">-60 s</text><text x="${W - 4}" y="${H - 3}" text-anchor="end">now</text></svg>`;
  return svg;
}

function throughputChart(counts) {
  const h = 48, n = counts.length, top = Math.max(1, ...counts);
  const bw = (W - PAD_L - 4) / n;
  let svg = `<svg class="throughput" viewBox="0 0 ${W} ${h}" data-requests="${counts.reduce((a, b) => a + b, 0)}">`;
  svg += `<text x="${PAD_L - 4}" y="10" text-anchor="end">${fmt(top, 0)}/s</text>`;
  counts.forEach((c, i) => {
    const bh = ((h - 6) * c) / top;
    if (c > 0) svg += `<rect x="${(PAD_L + i * bw).toFixed(1)}" y="${(h - bh).toFixed(1)}" width="${Math.max(1, bw - 1).toFixed(1)}" height="${bh.toFixed(1)}" fill="var(--bar)"/>`;
  });
  return svg + "</svg>";
}

function stat(key, value, cls = "") { return `<div class="stat"><div class="v ${cls}">${value}</div><div class="k">${key}</div></div>`; }

function renderTier(name, t, series) {
  const m1 = t.windows["1m"], m5 = t.windows["5m"], h1 = t.windows["1h"];
  const okAttain = m5.attainment === null || m5.attainment >= t.slo.objective / 100;
  const budget = h1.error_budget_remaining;
  const alerts = [t.alerts.fast_burn ? `<span class="badge fire">fast burn</span>` : "",
                  t.alerts.slow_burn ? `<span class="badge fire">slow burn</span>` : ""].join(" ").trim();
  const card = document.createElement("article");
  card.className = "tier";
  Object.assign(card.dataset, {
    tier: name, count1m: m1.count, count5m: m5.count, count1h: h1.count,
    p50Ms: m1.p50_ms ?? "", p99Ms: m1.p99_ms ?? "", attainment5m: m5.attainment ?? "",
    budget1h: budget, throughputRps: m1.throughput_rps, queueDepth: t.queue.depth,
    seriesRequests: series.count.reduce((a, b) => a + b, 0),
  });
  card.innerHTML =
    `<h2>${name} <span>${alerts || `<span class="badge good">within budget</span>`}</span></h2>` +
    `<div class="target">p${t.slo.percentile} ≤ ${ms(t.slo.latency_ms)} · objective ${t.slo.objective}% · burn 5m ${fmt(t.burn_rate["5m"], 2)}× · 1h ${fmt(t.burn_rate["1h"], 2)}×</div>` +
    `<div class="stats">` +
    stat("p50 (1 min)", ms(m1.p50_ms)) + stat("p99 (1 min)", ms(m1.p99_ms), m1.p99_ms !== null && m1.p99_ms > t.slo.latency_ms ? "bad" : "") +
    stat("attainment (5 min)", pct(m5.attainment), okAttain ? "ok" : "bad") +
    stat("error budget left (1 h)", budget >= 0 ? pct(budget, 1) : "exhausted", budget >= 0 ? "ok" : "bad") +
    stat("throughput", fmt(m1.throughput_rps, 1) + " req/s") + stat("queue depth", fmt(t.queue.depth, 0) + (t.queue.lag ? ` · lag ${t.queue.lag}` : "")) +
    `</div>` + latencyChart(series, t.slo.latency_ms) +
    `<div class="legend"><i style="background: var(--p50)"></i>p50 <i style="background: var(--p99)"></i>p99 <i style="background: var(--slo)"></i>SLO · per second</div>` +
    throughputChart(series.count);
  return card;
}

function renderProcessors(processors) {
  const body = document.querySelector("#processors tbody");
  body.replaceChildren();
  for (const [name, windows] of Object.entries(processors)) {
    const p = windows["1m"], util = p.utilisation ?? 0;
    const row = document.createElement("tr");
    Object.assign(row.dataset, { processor: name, count1m: p.count, batch: p.mean_batch_size ?? "", utilisation: util,
                                 energyPer1k: p.energy_j_per_1k, costPer1k: p.cost_per_1k });
    row.innerHTML = `<td>${name}</td><td>${fmt(p.throughput_rps, 1)}</td><td>${fmt(p.mean_batch_size, 1)}</td>` +
      `<td><span class="util"><b style="width:${(100 * util).toFixed(1)}%"></b></span>${pct(util, 1)}</td>` +
      `<td>${fmt(p.energy_j_per_1k, 3)}</td><td>${p.cost_per_1k ? p.cost_per_1k.toExponential(2) : "–"}</td>` +
      `<td>${fmt(p.p50_ms, 2)}</td><td>${fmt(p.p99_ms, 2)}</td>`;
    body.appendChild(row);
  }
}

async function pollBatches() {
  const body = document.querySelector("#batches tbody");
  try {
    const response = await fetch("/v1/batches?limit=10", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const rows = (await response.json()).data.map((b) => {
      const c = b.request_counts, done = c.completed + c.failed, share = c.total ? done / c.total : 0;
      const row = document.createElement("tr");
      Object.assign(row.dataset, { batchId: b.id, status: b.status, total: c.total, done: done, failed: c.failed });
      row.innerHTML = `<td>${b.id}</td><td>${b.endpoint}</td><td>${b.status}</td><td>${done} / ${c.total}</td>` +
        `<td>${c.failed}</td><td><span class="util"><b style="width:${(100 * share).toFixed(1)}%"></b></span>${pct(share, 1)}</td>`;
      return row;
    });
    body.replaceChildren(...rows);
  } catch (error) {
    body.replaceChildren();
  }
}

async function poll() {
  pollBatches();
  const status = document.getElementById("status");
  try {
    const response = await fetch("/v1/slo", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const report = await response.json();
    const tiers = document.getElementById("tiers");
    tiers.replaceChildren(...Object.entries(report.tiers).map(([name, t]) => renderTier(name, t, report.series[name])));
    renderProcessors(report.processors);
    updates += 1;
    status.className = "";
    status.dataset.updates = updates;
    status.dataset.nowMs = report.now_ms;
    status.textContent = `live · ${new Date(report.now_ms).toISOString().slice(11, 19)} UTC · gateway ${report.gateway}`;
  } catch (error) {
    status.className = "error";
    status.textContent = `no data: ${error.message}`;
  }
}

poll();
setInterval(poll, POLL_MS);
