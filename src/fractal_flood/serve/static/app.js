// The playground: streams /v1/flood block by block, one shaded span per root; and the bench view.
"use strict";

const $ = (id) => document.getElementById(id);
const fmt = (x, digits = 0) => Number(x).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
const visible = (s) => s.replace(/\n/g, "\u21b5").replace(/ /g, "\u00b7");

// ---------------------------------------------------------------- views
function show(view) {
  const bench = view === "bench";
  $("play").hidden = bench;
  $("bench").hidden = !bench;
  $("tab-play").setAttribute("aria-pressed", String(!bench));
  $("tab-bench").setAttribute("aria-pressed", String(bench));
  if (bench) loadBench();
}
$("tab-play").addEventListener("click", () => show("play"));
$("tab-bench").addEventListener("click", () => show("bench"));

// ---------------------------------------------------------------- playground
const roots = []; // every root shown so far: {id, text, energy, chunks}
let running = null; // the AbortController of the request in flight

$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("form").requestSubmit();
  }
});
$("form").addEventListener("submit", (e) => {
  e.preventDefault();
  generate();
});

function number(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function body() {
  const b = { prompt: $("prompt").value, max_tokens: number("max_tokens"), temperature: number("temperature"),
    decoder: $("decoder").value, k: number("k"), threshold: number("threshold") };
  const topP = number("top_p");
  if (topP !== null && topP < 1) b.top_p = topP;
  const seed = number("seed");
  if (seed !== null) b.seed = seed;
  return b;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function generate() {
  if (running) running.abort();
  running = new AbortController();
  const out = $("output");
  out.replaceChildren();
  const promptSpan = document.createElement("span");
  promptSpan.className = "prompt-text";
  promptSpan.textContent = $("prompt").value;
  out.append(promptSpan);
  roots.length = 0;
  $("detail").hidden = true;
  showError("");
  $("send").disabled = true;
  $("speed").textContent = "Planning…";
  const t0 = performance.now();
  const totals = { chunks: 0, chars: 0, manager: 0, flood: 0, blocks: 0 };
  try {
    const resp = await fetch("/v1/flood", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body()), signal: running.signal });
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({ error: { message: resp.statusText } }));
      throw new Error(err.error ? err.error.message : resp.statusText);
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const event = JSON.parse(data);
        if (event.error) throw new Error(event.error.message);
        if (event.done) {
          speedLine(totals, (performance.now() - t0) / 1000, event);
        } else {
          addBlock(event, totals);
          speedLine(totals, (performance.now() - t0) / 1000, null);
        }
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") showError(err.message);
  } finally {
    $("send").disabled = false;
    running = null;
  }
}

function addBlock(event, totals) {
  const out = $("output");
  for (const root of event.roots) {
    const span = document.createElement("span");
    const i = roots.length;
    roots.push(root);
    span.className = "root fresh " + (i % 2 ? "b" : "a");
    span.textContent = root.text;
    span.tabIndex = 0;
    span.dataset.index = String(i);
    span.setAttribute("aria-label", `root ${root.id}: ${root.text}`);
    out.append(span);
  }
  totals.chunks += event.chunks;
  totals.chars += event.chars;
  totals.manager += event.manager_seconds;
  totals.flood += event.flood_seconds;
  totals.blocks += 1;
}

function speedLine(t, seconds, done) {
  const work = t.manager + t.flood || 1;
  const parts = [`${fmt(t.chunks / seconds)} tokens/s`, `${fmt(t.chars / seconds)} chars/s`,
    `manager ${fmt(100 * t.manager / work)}% / flood ${fmt(100 * t.flood / work)}%`,
    `${roots.length} roots, ${t.chunks} chunks, ${t.chars} chars, ${t.blocks} blocks in ${fmt(seconds, 2)} s`];
  if (done) parts.push(`seed ${done.seed}`, done.finish_reason);
  $("speed").textContent = parts.join(" \u00b7 ");
}

function describe(span) {
  const root = roots[Number(span.dataset.index)];
  if (!root) return;
  const panel = $("detail");
  const rows = root.chunks.map((c, j) => `<tr><td class="num">${j + 1}</td><td><code>${escapeHtml(visible(c.text))}</code></td>` +
    `<td class="num">${c.text.length}</td><td class="num">${c.energy === null ? "n/a" : fmt(c.energy, 4)}</td></tr>`).join("");
  panel.innerHTML = `<strong>root ${root.id}</strong> \u00b7 <code>${escapeHtml(visible(root.text))}</code> \u00b7 ` +
    `energy ${fmt(root.energy, 4)} \u00b7 ${root.chunks.length} chunk(s)` +
    `<table><thead><tr><th class="num">chunk</th><th>characters</th><th class="num">chars</th><th class="num">energy</th></tr></thead>` +
    `<tbody>${rows}</tbody></table>`;
  panel.hidden = false;
}
for (const type of ["mouseover", "focusin"]) {
  $("output").addEventListener(type, (e) => {
    if (e.target.classList && e.target.classList.contains("root")) describe(e.target);
  });
}

function escapeHtml(s) {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// ---------------------------------------------------------------- bench view
let benchLoaded = false;
async function loadBench() {
  if (benchLoaded) return;
  const status = $("bench-status");
  try {
    const resp = await fetch("/bench.json");
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.error ? data.error.message : resp.statusText);
    benchLoaded = true;
    const run = data.run || {};
    status.textContent = `${run.device || "?"}, ${run.dtype || "?"}, torch ${run.torch || "?"}, ${run.date || ""}` +
      (run.command ? ` \u2014 ${run.command}` : "");
    drawChart(data.rows || []);
    drawTables(data.rows || []);
  } catch (err) {
    status.textContent = err.message;
  }
}

const MODE_COLORS = { "render-only": "#1f5fbf", "end-to-end": "#c4511c", "autoregressive": "#4d7d2a" };

// The quality of a row: the held-out bits per character of the model that chose the text
// (bench JSON since 2026-11-28), or the older files' bits per character of the row's text.
const quality = (r) => (typeof r.heldout_bpc === "number" ? r.heldout_bpc : r.bpc);

function drawChart(rows) {
  const pts = rows.filter((r) => typeof r.tokens_per_s === "number" && typeof quality(r) === "number");
  if (!pts.length) return;
  const W = 720, H = 400, L = 64, R = 16, T = 16, B = 56;
  const xs = pts.map((r) => Math.log10(r.tokens_per_s)), ys = pts.map(quality);
  const x0 = Math.floor(Math.min(...xs)), x1 = Math.ceil(Math.max(...xs));
  const yPad = 0.05 * (Math.max(...ys) - Math.min(...ys) || 1);
  const y0 = Math.min(...ys) - yPad, y1 = Math.max(...ys) + yPad;
  const px = (v) => L + (v - x0) / (x1 - x0 || 1) * (W - L - R);
  const py = (v) => T + (y1 - v) / (y1 - y0) * (H - T - B);
  const parts = [`<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="tokens per second against bits per character">`];
  for (let e = x0; e <= x1; e++) {
    parts.push(`<line x1="${px(e)}" x2="${px(e)}" y1="${T}" y2="${H - B}" stroke="#e5e1d8"/>`,
      `<text x="${px(e)}" y="${H - B + 16}" text-anchor="middle">${fmt(10 ** e)}</text>`);
  }
  const step = niceStep((y1 - y0) / 5);
  for (let v = Math.ceil(y0 / step) * step; v <= y1; v += step) {
    parts.push(`<line x1="${L}" x2="${W - R}" y1="${py(v)}" y2="${py(v)}" stroke="#e5e1d8"/>`,
      `<text x="${L - 6}" y="${py(v) + 4}" text-anchor="end">${v.toFixed(2)}</text>`);
  }
  parts.push(`<line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="#555"/>`,
    `<line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" stroke="#555"/>`,
    `<text x="${(L + W - R) / 2}" y="${H - 14}" text-anchor="middle">tokens per second (chunks/s, log scale)</text>`,
    `<text transform="translate(16 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">bits per character (lower is better)</text>`);
  pts.forEach((r, i) => {
    const color = MODE_COLORS[r.mode] || "#777";
    parts.push(`<circle cx="${px(xs[i])}" cy="${py(ys[i])}" r="5" fill="${color}" fill-opacity="0.8"><title>${escapeHtml(r.name)}: ` +
      `${fmt(r.tokens_per_s)} tokens/s, ${quality(r).toFixed(3)} bits/char</title></circle>`);
  });
  let ly = T + 4;
  for (const [mode, color] of Object.entries(MODE_COLORS)) {
    parts.push(`<circle cx="${W - R - 130}" cy="${ly + 6}" r="5" fill="${color}"/><text x="${W - R - 120}" y="${ly + 10}">${mode}</text>`);
    ly += 18;
  }
  parts.push("</svg>");
  $("chart").innerHTML = parts.join("");
  $("bench-figure").hidden = false;
}

function niceStep(raw) {
  const p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw);
}

function drawTables(rows) {
  const cols = [["row", "name", null], ["tokens/s", "tokens_per_s", 0], ["chars/s", "chars_per_s", 0],
    ["roots", "roots", 0], ["requests", "requests", 0], ["seconds", "seconds", 3], ["fidelity", "fidelity", 3],
    ["held-out bits/char", "heldout_bpc", 3], ["MFLOP/token", "mflop_per_token", 2]];
  const holder = $("bench-tables");
  holder.replaceChildren();
  for (const mode of [...new Set(rows.map((r) => r.mode))]) {
    const h = document.createElement("h2");
    h.textContent = mode;
    const wrap = document.createElement("div");
    wrap.className = "table-wrap";
    const head = cols.map(([label, , d]) => `<th class="${d === null ? "" : "num"}">${label}</th>`).join("");
    const body = rows.filter((r) => r.mode === mode).map((r) => "<tr>" + cols.map(([, key, d]) => {
      const v = r[key];
      return d === null ? `<td>${escapeHtml(String(v))}</td>` :
        `<td class="num">${typeof v === "number" ? fmt(v, d) : escapeHtml(String(v))}</td>`;
    }).join("") + "</tr>").join("");
    wrap.innerHTML = `<table class="bench-table"><thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>`;
    holder.append(h, wrap);
  }
}
