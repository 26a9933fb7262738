// The dashboard's one page: HTML, CSS and script inline (no CDN, no network but
// its own server), fed by the server-sent events of dashboard.ts. It only reads;
// the token, when one is needed, is typed in and sent once in a header, never kept.

export const DASHBOARD_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>syncbn · live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
:root{--fg:#1d2330;--muted:#6b7385;--line:#e3e6ee;--bg:#f6f7fb;--card:#fff;--ok:#1f9d55;--bad:#d64545;--warn:#c98a00;--accent:#3b5bdb}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;align-items:baseline;gap:16px;flex-wrap:wrap;padding:14px 24px;background:#1d2330;color:#fff}
header h1{font-size:18px;margin:0;font-weight:600}#runline{color:#c5cbe0}#conn{margin-left:auto;font-size:12px;color:#c5cbe0}
main{padding:16px 24px;display:grid;gap:16px;grid-template-columns:repeat(12,1fr)}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 16px}
.w12{grid-column:span 12}.w6{grid-column:span 6}.w4{grid-column:span 4}.w8{grid-column:span 8}
@media(max-width:1000px){.w6,.w4,.w8{grid-column:span 12}}
h2{font-size:13px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);margin:0 0 8px;font-weight:600}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}th,td{padding:4px 8px;text-align:right;border-bottom:1px solid var(--line);white-space:nowrap}
th{font-weight:600;color:var(--muted);font-size:12px}th:first-child,td:first-child{text-align:left}
.pill{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;background:var(--muted)}
.st-running{background:var(--ok)}.st-finished{background:var(--accent)}.st-lost{background:var(--bad)}.st-stopped{background:var(--warn)}.st-waiting{background:#9aa1b3}.st-failed{background:var(--bad)}
.err{color:var(--bad);font-size:12px;white-space:normal;text-align:left;max-width:520px}
.split{display:inline-flex;width:160px;height:10px;border-radius:3px;overflow:hidden;background:var(--line);vertical-align:middle}
.split .c{background:var(--accent)}.split .w{background:#f08c00}
.legend{font-size:12px;color:var(--muted)}.legend i{display:inline-block;width:14px;height:3px;margin:0 4px 2px 10px;vertical-align:middle}
.note{color:var(--muted);margin:4px 0 8px;max-width:1000px}
.big{font-size:20px;font-weight:600}
#settings{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:2px 16px;font-size:13px}#settings div{display:flex;justify-content:space-between;border-bottom:1px solid var(--line);padding:2px 0}#settings span{color:var(--muted)}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;vertical-align:-1px}
#bn-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:12px}
.layer{border:1px solid var(--line);border-radius:6px;padding:8px}.layer h3{margin:0 0 4px;font-size:13px}
svg text{font-size:10px;fill:var(--muted)}svg .ax{stroke:#c9cedb}svg .grid{stroke:#eef0f5}
#login[hidden]{display:none}#login{position:fixed;inset:0;background:rgba(20,24,34,.6);display:flex;align-items:center;justify-content:center}
#login form{background:#fff;padding:20px;border-radius:8px;display:grid;gap:8px;min-width:320px}
</style></head>
<body>
<header><h1>syncbn · live</h1><span id="runline">connecting…</span><span id="state" class="pill">…</span><span id="conn"></span></header>
<main>
<section class="card w12"><h2>Workers</h2>
<table id="ranks"><thead><tr><th>rank</th><th style="text-align:left">status</th><th>step</th><th>samples/s</th><th>compute ms</th><th>wait in rounds ms</th><th style="text-align:left">step time <span class="legend"><i style="background:var(--accent)"></i>compute<i style="background:#f08c00"></i>waiting</span></th></tr></thead><tbody></tbody></table>
<p class="note">Per worker, its own report of its last step: time computing and time blocked in synchronization rounds. Steps count the steps completed (the first is 1), as in metrics.jsonl.</p></section>
<section class="card w6"><h2>Training loss</h2><div id="loss-latest" class="big"></div><div id="loss-chart"></div></section>
<section class="card w6"><h2>Test accuracy</h2><div id="acc-latest" class="big"></div><div id="acc-chart"></div></section>
<section class="card w12" id="bn-panel"><h2>BN statistics: each rank's batch against the global batch</h2>
<p class="note" id="bn-note">Per BN layer, how far each worker's own batch statistics are from those sync BN normalizes with: the mean over channels of |μ<sub>k</sub> − μ| / σ and of ln(σ<sub>k</sub>² / σ²), sampled every few steps. Local BN would normalize with the rank's own μ<sub>k</sub>, σ<sub>k</sub>; these numbers are that noise. Dotted: the running statistics (used in eval) against the current batch.</p>
<div class="legend" id="bn-legend"><i style="background:linear-gradient(90deg,#4263eb,#f08c00,#2b8a3e)"></i>each rank (its colour above)<i style="background:#1d2330"></i>mean over ranks<i style="background:#d64545"></i>max over ranks<i style="background:#1f9d55"></i>running vs batch</div>
<div id="bn-grid"></div>
<h2 style="margin-top:12px">Latest sample</h2>
<table id="bn-table"><thead><tr><th>layer</th><th>step</th><th>channels</th><th>values/channel per rank</th><th>|μₖ−μ|/σ mean</th><th>max</th><th>ln(σₖ²/σ²) mean</th><th>max |·|</th><th>running |Δμ|/σ</th><th>running ln(var ratio)</th></tr></thead><tbody></tbody></table>
</section>
<section class="card w6"><h2>Synchronization rounds</h2>
<table id="latency"><thead><tr><th>phase</th><th>rounds</th><th>median ms</th><th>p90 ms</th><th>p99 ms</th></tr></thead><tbody></tbody></table>
<p id="sync-share" class="big"></p>
<p class="note">Round span: from the first worker's contribution to the result sent, at the coordinator (last 1024 rounds per phase). fwd/bwd: BN statistics and gradient sums per layer; grad: all parameter gradients; sum: evaluation.</p></section>
<section class="card w6"><h2>Settings</h2><div id="settings"></div></section>
</main>
<div id="login" hidden><form id="login-form"><b>This dashboard needs the run token</b><label>token <input id="token" type="password" autocomplete="off"></label><button>open</button><span id="login-msg" class="err"></span></form></div>
<script>
"use strict";
const $ = (s) => document.querySelector(s);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;","\\"":"&quot;","'":"&#39;"})[c]);
const fmt = (v, d) => v === null || v === undefined || !isFinite(v) ? "–" : (d === undefined ? Number(v).toPrecision(4) : Number(v).toFixed(d));
const RANK_COLORS = ["#4263eb","#f08c00","#2b8a3e","#c2255c","#7048e8","#0b7285","#e8590c","#5c940d","#a61e4d","#1864ab"];
const S = { summary: null, loss: [], accuracy: [], bn: new Map() };

function chart(lines, o) {
  const W = o.w || 520, H = o.h || 180, L = 44, R = 8, T = 8, B = 22;
  let xs = [], ys = [];
  for (const l of lines) for (const p of l.pts) if (p[1] !== null && isFinite(p[1])) { xs.push(p[0]); ys.push(p[1]); }
  if (o.y0 !== undefined) ys.push(o.y0);
  if (xs.length === 0) return '<svg width="100%" viewBox="0 0 ' + W + ' ' + H + '"><text x="' + W / 2 + '" y="' + H / 2 + '" text-anchor="middle">no data yet</text></svg>';
  let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) x1 = x0 + 1; if (y1 === y0) { y1 += 0.5; y0 -= 0.5; }
  const pad = (y1 - y0) * 0.05; y1 += pad; if (o.y0 === undefined) y0 -= pad;
  const X = (x) => L + (x - x0) / (x1 - x0) * (W - L - R), Y = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  let s = '<svg width="100%" viewBox="0 0 ' + W + ' ' + H + '" class="' + (o.cls || "") + '">';
  for (let i = 0; i <= 3; i++) { const y = y0 + (y1 - y0) * i / 3; s += '<line class="grid" x1="' + L + '" x2="' + (W - R) + '" y1="' + Y(y) + '" y2="' + Y(y) + '"/><text x="' + (L - 4) + '" y="' + (Y(y) + 3) + '" text-anchor="end">' + fmt(y, Math.abs(y1 - y0) < 0.1 ? 3 : Math.abs(y1 - y0) < 10 ? 2 : 0) + '</text>'; }
  s += '<line class="ax" x1="' + L + '" x2="' + (W - R) + '" y1="' + (H - B) + '" y2="' + (H - B) + '"/>';
  s += '<text x="' + L + '" y="' + (H - 6) + '">step ' + x0 + '</text><text x="' + (W - R) + '" y="' + (H - 6) + '" text-anchor="end">step ' + x1 + '</text>';
  if (o.ylabel) s += '<text x="' + (L + 4) + '" y="' + (T + 10) + '">' + esc(o.ylabel) + '</text>';
  for (const l of lines) {
    let d = "", pen = false;
    for (const p of l.pts) { if (p[1] === null || !isFinite(p[1])) { pen = false; continue; } d += (pen ? "L" : "M") + X(p[0]).toFixed(1) + " " + Y(p[1]).toFixed(1); pen = true; }
    if (l.dots) for (const p of l.pts) if (p[1] !== null && isFinite(p[1])) s += '<circle cx="' + X(p[0]).toFixed(1) + '" cy="' + Y(p[1]).toFixed(1) + '" r="3" fill="' + l.color + '"/>';
    if (d) s += '<path class="' + (l.cls || "") + '" d="' + d + '" fill="none" stroke="' + l.color + '" stroke-width="' + (l.width || 1.5) + '"' + (l.dash ? ' stroke-dasharray="' + l.dash + '"' : "") + (l.opacity ? ' stroke-opacity="' + l.opacity + '"' : "") + '/>';
  }
  return s + "</svg>";
}

function render() {
  const m = S.summary; if (!m) return;
  const run = m.run;
  document.title = "syncbn · live · " + run.title;
  $("#runline").textContent = run.title + (m.step !== null ? " · " + m.step + (m.totalSteps ? " / " + m.totalSteps : "") + " steps" : "") + " · " + Math.round(m.elapsedSeconds) + " s";
  const st = $("#state"); st.textContent = m.state; st.className = "pill st-" + m.state;
  $("#ranks tbody").innerHTML = m.ranks.map((r) => {
    const busy = (r.computeMs || 0) + (r.waitMs || 0), cw = busy ? 100 * r.computeMs / busy : 0;
    return '<tr data-rank="' + r.rank + '" data-status="' + r.status + '"><td class="rank"><i class="sw" style="background:' + RANK_COLORS[r.rank % 10] + '"></i><b>' + (r.ranks > 1 ? "ranks " + r.rank + "–" + (r.rank + r.ranks - 1) : "rank " + r.rank) + '</b></td><td class="status" style="text-align:left"><span class="pill st-' + r.status + '">' + r.status + '</span>' + (r.error ? '<div class="err">' + esc(r.error) + '</div>' : "") + '</td><td class="step">' + (r.step === null ? "–" : r.step) + '</td><td>' + fmt(r.samplesPerSecond, 0) + '</td><td>' + fmt(r.computeMs, 2) + '</td><td>' + fmt(r.waitMs, 2) + '</td><td style="text-align:left">' + (busy ? '<span class="split"><span class="c" style="width:' + cw + '%"></span><span class="w" style="width:' + (100 - cw) + '%"></span></span> ' + fmt(busy, 1) + ' ms' : "") + '</td></tr>';
  }).join("");
  const lastLoss = S.loss[S.loss.length - 1];
  $("#loss-latest").innerHTML = lastLoss ? '<span id="loss-value">' + fmt(lastLoss[1], 4) + '</span> <span class="legend">at step <span id="loss-step">' + lastLoss[0] + '</span>' + (m.lr != null ? ' · lr <span id="lr-value">' + fmt(m.lr) + '</span>' : "") + '</span>' : "–";
  $("#loss-chart").innerHTML = chart([{ pts: S.loss, color: "#4263eb", width: 1, opacity: 0.35 }, { pts: smooth(S.loss), color: "#4263eb", width: 2 }], { ylabel: "loss (global batch; bold: moving average)", cls: "loss" });
  const lastAcc = S.accuracy[S.accuracy.length - 1];
  $("#acc-latest").innerHTML = lastAcc ? fmt(100 * lastAcc[1], 2) + '% <span class="legend">after step ' + lastAcc[0] + '</span>' : '<span class="legend">no evaluation yet (every epoch end, or --eval-every N)</span>';
  $("#acc-chart").innerHTML = chart([{ pts: S.accuracy.map((p) => [p[0], 100 * p[1]]), color: "#2b8a3e", width: 2, dots: true }], { ylabel: "test accuracy %", h: 150 });
  $("#latency tbody").innerHTML = Object.entries(m.latency).map(([ph, p]) => '<tr data-phase="' + ph + '"><td>' + ph + '</td><td>' + p.rounds + '</td><td>' + fmt(p.p50, 3) + '</td><td>' + fmt(p.p90, 3) + '</td><td>' + fmt(p.p99, 3) + '</td></tr>').join("");
  $("#sync-share").innerHTML = m.syncShare === null ? "" : '<span id="sync-share-value">' + fmt(100 * m.syncShare, 1) + '%</span> <span class="legend">of the workers\\' step time is waiting in synchronization rounds</span>';
  $("#settings").innerHTML = Object.entries(run.settings).map(([k, v]) => '<div><span>' + esc(k) + '</span><b>' + esc(v === null ? "–" : v) + '</b></div>').join("");
  renderBn(m);
}

function layerLabel(layer, r, m) { const name = (r && r.name) || (m.layerNames && m.layerNames[layer]); return name ? esc(name) + ' <span class="legend">(layer ' + layer + ')</span>' : 'layer ' + layer; }
function renderBn(m) {
  const note = m.run.bnNote;
  if (note) { $("#bn-note").textContent = note; $("#bn-legend").hidden = true; $("#bn-grid").innerHTML = ""; $("#bn-table tbody").innerHTML = ""; return; }
  const W = m.world, cards = [];
  for (const [layer, pts] of [...S.bn.entries()].sort((a, b) => a[0] - b[0])) {
    const dev = [], lv = [];
    for (let k = 0; k < W; k++) {
      dev.push({ pts: pts.map((p) => [p[0], p[7 + k]]), color: RANK_COLORS[k % 10], width: 1, opacity: 0.45 });
      lv.push({ pts: pts.map((p) => [p[0], p[7 + W + k]]), color: RANK_COLORS[k % 10], width: 1, opacity: 0.45 });
    }
    dev.push({ pts: pts.map((p) => [p[0], p[2]]), color: "#d64545", width: 1.2, dash: "4 3" }, { pts: pts.map((p) => [p[0], p[1]]), color: "#1d2330", width: 2, cls: "bn-mean" }, { pts: pts.map((p) => [p[0], p[5]]), color: "#1f9d55", width: 1.6, dash: "2 3" });
    lv.push({ pts: pts.map((p) => [p[0], p[3]]), color: "#1d2330", width: 2 }, { pts: pts.map((p) => [p[0], p[6]]), color: "#1f9d55", width: 1.6, dash: "2 3" });
    const last = m.bnLatest.find((r) => r.layer === layer);
    cards.push('<div class="layer" data-layer="' + layer + '"><h3>' + layerLabel(layer, last, m) + (last ? ' <span class="legend">' + last.channels + ' channels, ' + esc(nText(last.n)) + ' values/channel per rank</span>' : "") + '</h3>' +
      chart(dev, { h: 150, w: 360, ylabel: "|μₖ − μ| / σ", y0: 0, cls: "bn-dev" }) + chart(lv, { h: 150, w: 360, ylabel: "ln(σₖ² / σ²)", cls: "bn-logvar" }) + '</div>');
  }
  $("#bn-grid").innerHTML = cards.join("") || '<p class="note">waiting for the first sampled step…</p>';
  $("#bn-table tbody").innerHTML = m.bnLatest.map((r) => '<tr data-layer="' + r.layer + '"><td data-field="layer">' + layerLabel(r.layer, r, m) + '</td><td data-field="step">' + r.step + '</td><td>' + r.channels + '</td><td>' + esc(nText(r.n)) + '</td>' +
    ["meanDevMean", "meanDevMax", "logVarMean", "logVarMaxAbs", "runningMeanGap", "runningLogVar"].map((f) => '<td data-field="' + f + '">' + fmt(r[f]) + '</td>').join("") + '</tr>').join("");
}
function smooth(pts) { const k = Math.max(1, Math.round(pts.length / 25)), out = []; let acc = 0; for (let i = 0; i < pts.length; i++) { acc += pts[i][1]; if (i >= k) acc -= pts[i - k][1]; out.push([pts[i][0], acc / Math.min(i + 1, k)]); } return out; }
function nText(n) { const v = n.filter((x) => x !== null); return v.length && v.every((x) => x === v[0]) ? String(v[0]) : n.map((x) => x === null ? "–" : x).join(" / "); }

function connect() {
  const es = new EventSource("/events");
  es.onopen = () => { $("#conn").textContent = "live"; };
  es.onerror = () => { $("#conn").textContent = "disconnected: the run may have ended (retrying)"; };
  es.addEventListener("snapshot", (e) => { const d = JSON.parse(e.data); S.summary = d.summary; S.loss = d.loss; S.accuracy = d.accuracy; S.bn = new Map(d.bn); render(); });
  es.addEventListener("update", (e) => {
    const d = JSON.parse(e.data); S.summary = d.summary; S.loss.push(...d.loss); S.accuracy.push(...d.accuracy);
    for (const [l, pts] of d.bn) { if (!S.bn.has(l)) S.bn.set(l, []); S.bn.get(l).push(...pts); }
    render();
  });
}

fetch("/session", { credentials: "same-origin" }).then((r) => {
  if (r.ok) return connect();
  $("#login").hidden = false;
  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("#token");
    fetch("/session", { credentials: "same-origin", headers: { Authorization: "Bearer " + input.value } }).then((r2) => {
      input.value = "";
      if (!r2.ok) { $("#login-msg").textContent = "wrong token"; return; }
      $("#login").hidden = true; connect();
    });
  });
});
</script>
</body></html>
`;
