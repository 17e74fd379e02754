/* cirron ui: each page asks the JSON API for its data and draws it with plotly.js. */
"use strict";

const cirronUI = (() => {
  const body = () => document.body.dataset;
  const $ = (html) => { const t = document.createElement("template"); t.innerHTML = html.trim(); return t.content.firstChild; };
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const main = () => document.getElementById("main");
  const PHASE_COLORS = { data_load: "#f59e0b", forward: "#3b82f6", backward: "#8b5cf6", optimizer_step: "#10b981", other: "#9ca3af" };
  const PALETTE = ["#3b82f6", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#ec4899", "#84cc16", "#f97316", "#6366f1", "#14b8a6", "#a855f7"];
  // span colours other than the phases' own (so an epoch never looks like data_load)
  const SPAN_PALETTE = ["#64748b", "#0891b2", "#db2777", "#65a30d", "#ea580c", "#4f46e5", "#0d9488", "#be123c", "#a16207", "#7c3aed"];
  const CONFIG = { displaylogo: false, responsive: true };

  function fmtNs(ns) {
    if (ns === null || ns === undefined || Number.isNaN(ns)) return "–";
    if (ns === 0) return "0";
    const a = Math.abs(ns);
    if (a >= 60e9) return (ns / 60e9).toFixed(1) + "m";
    if (a >= 1e9) return (ns / 1e9).toFixed(2) + "s";
    if (a >= 1e6) return (ns / 1e6).toFixed(2) + "ms";
    if (a >= 1e3) return (ns / 1e3).toFixed(1) + "µs";
    return Math.round(ns) + "ns";
  }
  // a unit for durations around `ns` (the largest shown): axes read 12.5 µs, not 0.0125 ms
  function unitOf(ns) {
    const a = Math.abs(ns || 0);
    if (a >= 1e9) return { div: 1e9, label: "s" };
    if (a >= 1e6) return { div: 1e6, label: "ms" };
    if (a >= 1e3) return { div: 1e3, label: "µs" };
    return { div: 1, label: "ns" };
  }
  const fmtBytes = (n) => n >= 1 << 30 ? (n / (1 << 30)).toFixed(1) + " GB" : n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MB" : n >= 1024 ? (n / 1024).toFixed(1) + " KB" : n + " B";
  const fmtDate = (ns) => ns ? new Date(ns / 1e6).toISOString().replace("T", " ").slice(0, 19) : "–";
  const fmtNum = (v) => typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(6)) : esc(v);
  function colorOf(name, names) {  // by position in the session's list of names: distinct and stable
    const i = names ? names.indexOf(name) : -1;
    if (PHASE_COLORS[name]) return PHASE_COLORS[name];
    if (i >= 0) return SPAN_PALETTE[i % SPAN_PALETTE.length];
    let h = 0;
    for (const c of String(name)) h = (h * 31 + c.charCodeAt(0)) >>> 0;
    return SPAN_PALETTE[h % SPAN_PALETTE.length];
  }

  async function api(url) {
    const r = await fetch(url);
    const doc = await r.json();
    if (!r.ok) throw new Error(doc.error || r.statusText);
    return doc;
  }

  function fail(err) {
    main().innerHTML = "";
    main().appendChild($(`<p class="error">${esc(err.message || err)}</p>`));
  }

  // plotly.js (4.8 MB) is a deferred script: the page asks for its data and builds its DOM
  // while the browser loads and starts it, and waits for it only to draw.
  const plotlyLoaded = new Promise((resolve) => {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", resolve, { once: true });
    else resolve();
  });

  async function plot(div, traces, layout) {
    await plotlyLoaded;
    const base = { margin: { l: 60, r: 20, t: 36, b: 44 }, paper_bgcolor: "#fff", plot_bgcolor: "#fff", font: { size: 12 } };
    for (const [k, v] of Object.entries(layout)) {  // plotly.js 3 takes axis titles as {text}
      if (/^[xy]axis\d*$/.test(k) && typeof v.title === "string") v.title = { text: v.title };
    }
    await Plotly.react(div, traces, Object.assign(base, layout), CONFIG);
    div.dataset.drawn = String(traces.reduce((n, t) => n + ((t.x || t.z || []).length || 0), 0));
  }

  function chartDiv(parent, id, height) {
    const d = $(`<div class="chart" id="${id}" style="height:${height || 360}px"></div>`);
    parent.appendChild(d);
    return d;
  }

  // while one of `sids` is live, call `redraw` every 2 s (the data keeps growing)
  function refreshWhileLive(sids, redraw) {
    async function tick() {
      const live = (await Promise.all(sids.map((sid) => api(`/api/session/${sid}`)))).some((s) => s.live);
      if (!live) return;
      await redraw();
      setTimeout(() => tick().catch(fail), 2000);
    }
    setTimeout(() => tick().catch(fail), 2000);
  }

  function sessionNav(sid, active) {
    const nav = document.getElementById("nav");
    nav.innerHTML = `<a href="/">Runs</a>` + ["timeline", "steps", "marks", "snapshots", "requests"].map(
      (v) => `<a href="/session/${sid}/${v}" class="${v === active ? "active" : ""}">${v[0].toUpperCase() + v.slice(1)}</a>`).join("");
    api(`/api/session/${sid}`).then((s) => {
      document.getElementById("status").innerHTML = `session <code>${esc(sid.slice(0, 12))}</code> ` +
        `<span class="badge ${s.status}">${s.status}</span>` + (s.run_id ? ` · <a href="/run/${encodeURIComponent(s.run_id)}">run ${esc(s.run_id)}</a>` : "");
    }).catch(() => {});
  }

  // ------------------------------------------------------------------------------ runs
  async function runsPage() {
    document.getElementById("nav").innerHTML = `<a href="/" class="active">Runs</a>`;
    let timer = null;
    async function refresh() {
      const doc = await api("/api/sessions");
      const m = main();
      const checked = new Set([...m.querySelectorAll("input.pick:checked")].map((i) => i.value));
      m.innerHTML = "";
      m.appendChild($(`<h1>Sessions <span class="muted">(${doc.sessions.length}, from ${doc.spools.map(esc).join(", ")})</span></h1>`));
      if (doc.warnings.length) {
        m.appendChild($(`<div class="warning" id="warnings"><b>Some of the spool could not be read</b> (what was readable is shown):<ul>${
          doc.warnings.map((w) => `<li>${esc(w)}</li>`).join("")}</ul></div>`));
      }
      if (!doc.sessions.length) {
        m.appendChild($(`<p class="muted">No traces found in this spool yet. Run a script that calls <code>ci.profile()</code>; sessions appear here on their own.</p>`));
      } else {
        const rows = doc.sessions.map((s) => `<tr data-session="${s.id}">
          <td><input type="checkbox" class="pick" value="${s.id}" ${checked.has(s.id) ? "checked" : ""}></td>
          <td><a href="/session/${s.id}/timeline"><code>${s.id.slice(0, 12)}</code></a></td>
          <td><span class="badge ${s.status}">${s.status}</span></td>
          <td>${fmtDate(s.started_ns)}</td><td class="num">${s.live ? "(live)" : fmtNs(s.duration_ns)}</td>
          <td class="num">${s.spans}</td><td class="num">${s.marks}</td><td class="num">${s.snapshots}</td>
          <td class="num">${fmtBytes(s.bytes)}</td>
          <td>${s.run_id ? `<a href="/run/${encodeURIComponent(s.run_id)}" title="${esc(s.run_id)}">${esc(s.run_id.length > 16 ? s.run_id.slice(0, 12) + "…" : s.run_id)}</a>` : ""}</td><td class="num">${s.rank ?? ""}</td>
          <td>${esc(s.host || "")}</td>
          <td>${s.too_big ? `<span class="muted too-big" title="${esc(s.too_big)}">too big to view here</span>` :
            `<a href="/session/${s.id}/steps">steps</a> · <a href="/session/${s.id}/marks">marks</a> · <a href="/session/${s.id}/snapshots">snapshots</a> · <a href="/session/${s.id}/requests">requests</a>`}</td></tr>`).join("");
        m.appendChild($(`<table id="sessions"><thead><tr><th></th><th>Session</th><th>Status</th><th>Started (UTC)</th><th class="num">Duration</th>
          <th class="num">Spans</th><th class="num">Marks</th><th class="num">Snapshots</th><th class="num">Size</th><th>Run</th><th class="num">Rank</th><th>Host</th><th>Views</th></tr></thead><tbody>${rows}</tbody></table>`));
        const btn = $(`<p><button id="compare">Compare marks of the checked sessions</button></p>`);
        btn.querySelector("button").onclick = () => {
          const ids = [...m.querySelectorAll("input.pick:checked")].map((i) => i.value);
          if (ids.length) location.href = "/marks?" + ids.map((i) => "session=" + i).join("&");
        };
        m.appendChild(btn);
      }
      const live = doc.sessions.some((s) => s.live);
      document.getElementById("status").textContent = (live ? "live sessions: refreshing every 2 s" : "refreshing every 10 s") + ` · ${new Date().toLocaleTimeString()}`;
      clearTimeout(timer);
      timer = setTimeout(() => refresh().catch(fail), live ? 2000 : 10000);
    }
    await refresh();
  }

  // ------------------------------------------------------------------------------ timeline
  async function timelinePage() {
    const sid = body().session;
    sessionNav(sid, "timeline");
    const q = new URLSearchParams(location.search);
    const m = main();
    m.innerHTML = `<h1>Timeline</h1><div class="controls muted" id="tl-info">Drag to zoom, double-click to reset, shift-drag or the pan tool to pan, scroll to zoom.</div>`;
    const div = chartDiv(m, "timeline", 520);
    let pending = null, seq = 0;
    // ?focus=START-END (ns): the step or request a link came from, shaded behind the bars
    const focus = /^(\d+)-(\d+)$/.exec(q.get("focus") || "");
    const shapes = focus ? [{ type: "rect", xref: "x", yref: "paper", x0: Number(focus[1]) / 1e6, x1: Number(focus[2]) / 1e6, y0: 0, y1: 1,
      layer: "below", fillcolor: "rgba(250, 204, 21, 0.25)", line: { color: "#ca8a04", width: 1, dash: "dot" } }] : [];

    // Rows: a span goes on the first row below its parent that is free over its time, so spans
    // that overlap (concurrent requests, threads) sit side by side instead of on top of each other.
    // Without overlap a span's row is its depth.
    function layout(doc) {
      const rowOf = new Map(), busy = [];
      const order = [...doc.spans].sort((a, b) => a.start - b.start || a.depth - b.depth);
      let overlap = false;
      for (const s of order) {
        const above = rowOf.has(s.parent) ? rowOf.get(s.parent) : s.depth - 1;
        let r = above + 1;
        while (busy[r] !== undefined && busy[r] > s.start) r++;
        busy[r] = Math.max(busy[r] ?? -Infinity, s.end);
        rowOf.set(s.i, r);
        if (r !== s.depth) overlap = true;
      }
      const base = [];  // merged blocks go on the first row of their depth
      for (let d = 0; d <= doc.max_depth; d++) {
        const rows = doc.spans.filter((s) => s.depth === d).map((s) => rowOf.get(s.i));
        base[d] = rows.length ? Math.min(...rows) : (d ? base[d - 1] + 1 : 0);
      }
      const rows = Math.max(doc.max_depth, ...rowOf.values(), ...doc.blocks.map((b) => base[b.depth]));
      return { row: (s) => rowOf.get(s.i), blockRow: (b) => base[b.depth], rows, overlap };
    }

    function traces(doc, lay) {
      const byName = new Map();
      for (const s of doc.spans) {
        if (!byName.has(s.name)) byName.set(s.name, []);
        byName.get(s.name).push(s);
      }
      const out = [];
      for (const [name, spans] of byName) {
        out.push({
          type: "bar", orientation: "h", name, legendgroup: name, marker: { color: colorOf(name, doc.names), line: { width: 0.5, color: "#fff" } },
          text: spans.map((s) => s.label), textposition: "inside", insidetextanchor: "start", textangle: 0,
          textfont: { color: "#fff", size: 11 },
          // cut to the window, so a span that began before it still shows its label at the left edge
          base: spans.map((s) => Math.max(s.start, doc.t0) / 1e6), x: spans.map((s) => Math.max((Math.min(s.end, doc.t1) - Math.max(s.start, doc.t0)) / 1e6, 1e-9)),
          y: spans.map(lay.row), width: 0.9,
          customdata: spans.map((s) => [s.label, fmtNs(s.end - s.start), fmtNs(s.cpu_ns), s.gpu_ns == null ? "–" : fmtNs(s.gpu_ns), esc(s.attrs).slice(0, 160), fmtNs(s.start), s.open ? " (open)" : "", s.depth]),
          hovertemplate: "<b>%{customdata[0]}</b>%{customdata[6]} (depth %{customdata[7]})<br>start %{customdata[5]}, wall %{customdata[1]}<br>cpu %{customdata[2]}, gpu %{customdata[3]}<br>%{customdata[4]}<extra></extra>",
        });
      }
      // spans too small to draw at this zoom, merged per name: faint, in their name's colour and legend entry
      const blocksByName = new Map();
      for (const b of doc.blocks) {
        if (!blocksByName.has(b.name)) blocksByName.set(b.name, []);
        blocksByName.get(b.name).push(b);
      }
      for (const [name, blocks] of blocksByName) {
        out.push({
          type: "bar", orientation: "h", name: byName.has(name) ? name + " (merged)" : name, legendgroup: name, showlegend: !byName.has(name),
          marker: { color: colorOf(name, doc.names), opacity: 0.45 },
          base: blocks.map((b) => b.start / 1e6), x: blocks.map((b) => Math.max((b.end - b.start) / 1e6, 1e-9)),
          y: blocks.map(lay.blockRow), width: 0.9,
          customdata: blocks.map((b) => [b.count, fmtNs(b.total_ns), b.name]),
          hovertemplate: "%{customdata[0]} spans too small to draw at this zoom (mostly %{customdata[2]})<br>summed wall %{customdata[1]}<extra></extra>",
        });
      }
      if (doc.marks.length) {
        out.push({
          type: "scatter", mode: "markers", name: "marks", x: doc.marks.map((k) => k.t / 1e6), y: doc.marks.map(() => -0.8),
          marker: { symbol: "line-ns-open", size: 10, color: "#111827" },
          customdata: doc.marks.map((k) => [k.name, k.value === null ? "NaN" : fmtNum(k.value)]),
          hovertemplate: "mark <b>%{customdata[0]}</b> = %{customdata[1]}<br>%{x:.3f} ms<extra></extra>",
        });
      }
      return out;
    }

    async function fetchWindow(t0, t1, fit) {
      const px = Math.max(200, div.clientWidth || 1200);
      const params = new URLSearchParams({ px });
      if (fit) params.set("fit", "1");
      // to the nearest ns: a window given in ms (a drag, a relayout) comes back as ns with float
      // noise (1000001 / 1e6 * 1e6 is 1000000.9999999999), and the address bar must show the ns asked for
      if (t0 !== null) params.set("t0", Math.round(t0));
      if (t1 !== null) params.set("t1", Math.round(t1));
      return api(`/api/session/${sid}/timeline?${params}`);
    }

    async function load(t0, t1, note) {
      const mine = ++seq;
      const doc = await fetchWindow(t0, t1);
      if (mine !== seq) return;
      await draw(doc, note);
    }

    async function draw(doc, note) {
      const merged = doc.blocks.reduce((n, b) => n + b.count, 0);
      document.getElementById("tl-info").textContent =
        `${doc.visible} spans in view` + (merged ? `: ${doc.spans.length} drawn one by one, ${merged} too small to draw at this zoom merged into faint blocks` : ", all drawn") +
        ` · window ${fmtNs(doc.t0)} – ${fmtNs(doc.t1)} of ${fmtNs(doc.duration_ns)}. ` + (note || "Drag to zoom, double-click for the whole session.") + (focus ? " The linked span's time is shaded." : "");
      const lay = layout(doc);
      const height = Math.min(1400, Math.max(520, 60 * (lay.rows + 2) + 170));
      div.style.height = height + "px";
      await plot(div, traces(doc, lay), {
        height, shapes, barmode: "overlay", showlegend: true, legend: { orientation: "h", y: -0.2 }, uniformtext: { mode: "hide", minsize: 9 }, hovermode: "closest", uirevision: "tl",
        dragmode: "zoom",
        xaxis: { title: "ms since session start", range: [doc.t0 / 1e6, doc.t1 / 1e6], zeroline: false },
        yaxis: { title: lay.overlap ? "nesting (overlapping spans side by side)" : "depth", fixedrange: true, range: [lay.rows + 0.6, -1.3],
          tickvals: [-0.8, ...Array.from({ length: lay.rows + 1 }, (_, i) => i)],
          ticktext: ["marks", ...Array.from({ length: lay.rows + 1 }, (_, i) => lay.overlap ? "" : String(i))] },
      });
      const url = new URL(location.href);
      url.searchParams.set("t0", doc.t0); url.searchParams.set("t1", doc.t1);
      history.replaceState(null, "", url);
    }

    // The first view: the whole session, or where its spans are when they fill little of it
    // (a short training loop after a long import): the server picks that window (fit=1).
    async function first() {
      const doc = await fetchWindow(null, null, true);
      return draw(doc, doc.fitted ? "Zoomed onto the session's spans (they fill little of it); double-click for the whole session." : null);
    }

    if (q.has("t0") || q.has("t1")) await load(q.has("t0") ? Number(q.get("t0")) : null, q.has("t1") ? Number(q.get("t1")) : null);
    else await first();
    div.on("plotly_relayout", (ev) => {
      let a = null, b = null;
      if (ev["xaxis.range[0]"] !== undefined) { a = ev["xaxis.range[0]"]; b = ev["xaxis.range[1]"]; }
      else if (Array.isArray(ev["xaxis.range"])) { [a, b] = ev["xaxis.range"]; }
      else if (ev["xaxis.autorange"]) { clearTimeout(pending); pending = setTimeout(() => load(null, null).catch(fail), 30); return; }
      else return;
      clearTimeout(pending);
      pending = setTimeout(() => load(Math.max(0, a * 1e6), b * 1e6).catch(fail), 60);
    });
  }

  // ------------------------------------------------------------------------------ steps
  async function stepsPage() {
    const sid = body().session;
    sessionNav(sid, "steps");
    const m = main();
    async function draw() {
      const doc = await api(`/api/session/${sid}/steps`);
      m.innerHTML = "<h1>Step breakdown</h1>";
      if (!doc.steps) {
        m.appendChild($(`<p class="muted">No training steps in this session (no <code>batch</code> or <code>step</code> spans: use <code>ci.batches(...)</code>).</p>`));
        return;
      }
      const tot = Object.values(doc.totals).reduce((a, b) => a + b, 0) || 1;
      m.appendChild($(`<p class="muted">${doc.steps} <code>${esc(doc.step_name)}</code> spans, median ${fmtNs(doc.p50_ns)}` +
        (doc.group > 1 ? `; each bar is the mean of ${doc.group} consecutive steps` : "") + ". Share of step time: " +
        Object.entries(doc.totals).map(([k, v]) => `${k} ${(100 * v / tot).toFixed(1)}%`).join(", ") + "</p>"));
      const div = chartDiv(m, "steps", 420);
      const phases = Object.keys(doc.bars);
      const unit = unitOf(Math.max(...doc.x.map((_, j) => phases.reduce((n, p) => n + doc.bars[p][j], 0))));
      const traces = Object.entries(doc.bars).map(([phase, ys]) => ({
        type: "bar", name: phase, x: doc.x, y: ys.map((v) => v / unit.div), marker: { color: PHASE_COLORS[phase] },
        customdata: doc.labels, hovertemplate: `%{customdata}<br>${phase}: %{y:.3f} ${unit.label}<extra></extra>`,
      }));
      await plot(div, traces, { barmode: "stack", bargap: 0.05, xaxis: { title: doc.group > 1 ? `step (bars of ${doc.group})` : "step" },
        yaxis: { title: unit.label }, legend: { orientation: "h", y: 1.1, traceorder: "normal" } });
      m.appendChild($("<h2>Slowest steps</h2>"));
      const rows = doc.slowest.map((s) => {
        const pad = Math.max(1000, (s.end - s.start) * 0.1);
        return `<tr><td><a href="/session/${sid}/timeline?t0=${Math.max(0, Math.floor(s.start - pad))}&t1=${Math.ceil(s.end + pad)}&focus=${s.start}-${s.end}">${esc(s.label)}</a></td>
          <td class="num">${fmtNs(s.wall_ns)}</td>${["data_load", "forward", "backward", "optimizer_step", "other"].map((p) => `<td class="num">${fmtNs(s[p])}</td>`).join("")}</tr>`;
      }).join("");
      m.appendChild($(`<table id="slowest"><thead><tr><th>Step</th><th class="num">Wall</th><th class="num">data_load</th><th class="num">forward</th>
        <th class="num">backward</th><th class="num">optimizer_step</th><th class="num">other</th></tr></thead><tbody>${rows}</tbody></table>`));
    }
    await draw();
    refreshWhileLive([sid], draw);
  }

  // ------------------------------------------------------------------------------ marks
  function smooth(ys, w) {  // exponential moving average, debiased (as TensorBoard's slider)
    if (!w) return ys;
    let last = 0, n = 0;
    return ys.map((y) => {
      if (y === null || !Number.isFinite(y)) return y;
      last = last * w + (1 - w) * y; n++;
      return last / (1 - Math.pow(w, n));
    });
  }

  async function marksPage() {
    const ids = (body().session || "").split(",").filter(Boolean);
    if (ids.length === 1) sessionNav(ids[0], "marks");
    else document.getElementById("nav").innerHTML = `<a href="/">Runs</a><a class="active">Marks (${ids.length} sessions)</a>`;
    const m = main();
    if (!ids.length) { m.innerHTML = `<p class="muted">Pick sessions on the <a href="/">runs page</a>.</p>`; return; }
    m.innerHTML = `<h1>Marks</h1><div class="controls">
      <label>x axis <select id="xaxis"><option value="step">step (n-th value)</option><option value="time">time since session start</option></select></label>
      <label>smoothing <input type="range" id="smooth" min="0" max="0.99" step="0.01" value="0"> <span id="smooth-v">0</span></label>
      <label><input type="checkbox" id="logy"> log scale</label></div><div class="grid" id="charts"></div>
      <h2>Summary marks</h2><div id="summary"></div>`;
    let doc = null;
    // compared sessions of one run are told apart by rank ("rank 1 · 436f722b"), others by id
    const infos = new Map((await api("/api/sessions")).sessions.map((s) => [s.id, s]));
    const runOf = (sid) => infos.get(sid)?.run_id;
    const labelOf = (sid) => {
      const info = infos.get(sid);
      const shared = info && info.run_id && info.rank != null && ids.some((o) => o !== sid && runOf(o) === info.run_id);
      return (shared ? `rank ${info.rank} · ` : "") + sid.slice(0, 8);
    };
    async function fetchAll() {
      const x = document.getElementById("xaxis").value;
      doc = await api(`/api/marks?x=${x}&` + ids.map((i) => "session=" + i).join("&"));
      await draw();
    }
    async function draw() {
      const w = Number(document.getElementById("smooth").value);
      document.getElementById("smooth-v").textContent = w.toFixed(2);
      const logy = document.getElementById("logy").checked;
      const names = [...new Set(doc.sessions.flatMap((s) => Object.keys(s.series)))].sort();
      const grid = document.getElementById("charts");
      if (!names.length) grid.innerHTML = `<p class="muted">No point marks (<code>ci.mark(name, value)</code>) in ${ids.length > 1 ? "these sessions" : "this session"}.</p>`;
      for (const name of names) {
        const id = "mark-" + name.replace(/[^A-Za-z0-9_-]/g, "_");
        const div = document.getElementById(id) || chartDiv(grid, id, ids.length > 1 ? 360 : 320);
        const traces = [];
        doc.sessions.forEach((s, k) => {
          const ser = s.series[name];
          if (!ser) return;
          const color = PALETTE[k % PALETTE.length];
          const label = labelOf(s.session);
          const xs = doc.x === "time" ? ser.x.map((v) => v / 1e9) : ser.x;
          if (w) traces.push({ type: "scatter", mode: "lines", name: label + " raw", x: xs, y: ser.y, line: { color, width: 1 }, opacity: 0.25, showlegend: false, hoverinfo: "skip" });
          traces.push({ type: "scatter", mode: "lines", name: label, x: xs, y: smooth(ser.y, w), line: { color, width: 2 } });
        });
        const ys = traces.flatMap((t) => t.y).filter((v) => v !== null && Number.isFinite(v));
        const flat = !logy && ys.length && ys.every((v) => v === ys[0]);  // e.g. a constant learning rate: centre it
        const yaxis = { type: logy ? "log" : "linear" };
        if (flat) yaxis.range = ys[0] ? [ys[0] - Math.abs(ys[0]), ys[0] + Math.abs(ys[0])] : [-1, 1];
        await plot(div, traces, { title: { text: name, x: 0.02 }, xaxis: { title: doc.x === "time" ? "s since session start" : "step" },
          yaxis, showlegend: ids.length > 1, legend: { orientation: "h", y: -0.3, yanchor: "top" },
          margin: { l: 60, r: 20, t: 36, b: ids.length > 1 ? 84 : 44 } });
      }
      const rows = doc.sessions.flatMap((s) => s.summary.map((r) => `<tr><td><code>${esc(labelOf(s.session))}</code></td><td>${esc(r.name)}</td><td>${esc(r.span)}</td><td class="num">${fmtNum(r.value)}</td></tr>`));
      document.getElementById("summary").innerHTML = rows.length
        ? `<table id="summary-marks"><thead><tr><th>Session</th><th>Mark</th><th>Span</th><th class="num">Value</th></tr></thead><tbody>${rows.join("")}</tbody></table>`
        : `<p class="muted">No summary marks.</p>`;
    }
    document.getElementById("xaxis").onchange = () => fetchAll().catch(fail);
    document.getElementById("smooth").oninput = () => draw().catch(fail);
    document.getElementById("logy").onchange = () => draw().catch(fail);
    await fetchAll();
    refreshWhileLive(ids, fetchAll);
  }

  // ------------------------------------------------------------------------------ snapshots
  async function snapshotsPage() {
    const sid = body().session;
    sessionNav(sid, "snapshots");
    const doc = await api(`/api/session/${sid}/snapshots`);
    const m = main();
    m.innerHTML = "<h1>Snapshots</h1>";
    if (!doc.tensors.length) {
      m.appendChild($(`<p class="muted">No snapshots in this session (wrap a model with <code>ci.wrap(model)</code> and loop with <code>ci.epochs(...)</code>).</p>`));
      return;
    }
    const pick = $(`<div class="controls"><label>tensor <select id="tensor">${doc.tensors.map((t, i) =>
      `<option value="${i}">${esc(t.tensor)} (${esc(t.role)}${t.shape ? ", " + esc(JSON.stringify(t.shape)) : ""})</option>`).join("")}</select></label></div>`);
    m.appendChild(pick);
    const firstWeight = doc.tensors.findIndex((t) => /weight$/.test(t.tensor));
    if (firstWeight > 0) document.getElementById("tensor").value = String(firstWeight);
    const stats = chartDiv(m, "snap-stats", 320);
    const heat = chartDiv(m, "snap-hist", 380);
    async function draw() {
      const t = doc.tensors[Number(document.getElementById("tensor").value)];
      const xs = t.labels;
      await plot(stats, ["mean", "std", "norm"].map((k, i) => ({ type: "scatter", mode: "lines+markers", name: k, x: xs, y: t[k], yaxis: k === "norm" ? "y2" : "y", line: { color: PALETTE[i] } })),
        { title: { text: `${t.tensor}: mean, std, norm per snapshot`, x: 0.02 }, margin: { l: 60, r: 70, t: 36, b: 44 }, yaxis: { title: "mean / std" }, yaxis2: { title: "norm", overlaying: "y", side: "right", tickmode: "auto", showgrid: false }, legend: { orientation: "h", y: -0.2 } });
      await plot(heat, [{ type: "heatmap", x: xs, y: t.hist_edges, z: t.hist_z, colorscale: "Viridis", colorbar: { title: { text: "share" } },
        hovertemplate: "%{x}<br>value ≈ %{y:.4g}<br>share %{z:.3f}<extra></extra>" }],
        { title: { text: `${t.tensor}: distribution per snapshot`, x: 0.02 }, yaxis: { title: "value" } });
    }
    document.getElementById("tensor").onchange = () => draw().catch(fail);
    await draw();
  }

  // ------------------------------------------------------------------------------ requests
  async function requestsPage() {
    const sid = body().session;
    sessionNav(sid, "requests");
    const doc = await api(`/api/session/${sid}/requests`);
    const m = main();
    m.innerHTML = "<h1>Requests</h1>";
    if (!doc.requests) {
      m.appendChild($(`<p class="muted">No <code>@ci.inference</code> requests in this session.</p>`));
      return;
    }
    m.appendChild($(`<p class="muted" id="req-summary">${doc.requests} requests · latency p50 ${fmtNs(doc.overall.p50)}, p95 ${fmtNs(doc.overall.p95)}, p99 ${fmtNs(doc.overall.p99)}</p>`));
    const lat = chartDiv(m, "latency", 340);
    const xs = doc.windows.map((w) => w.t / 1e9);
    const lu = unitOf(Math.max(...doc.windows.map((w) => w.p99)));
    await plot(lat, ["p50", "p95", "p99"].map((k, i) => ({ type: "scatter", mode: "lines+markers", name: k, x: xs, y: doc.windows.map((w) => w[k] / lu.div), line: { color: PALETTE[i] } })),
      { title: { text: "latency over time", x: 0.02 }, xaxis: { title: "s since session start" }, yaxis: { title: lu.label, rangemode: "tozero" } });
    const grid = $(`<div class="grid"></div>`);
    m.appendChild(grid);
    if (doc.ttft_ns.length) {
      const tu = unitOf(Math.max(...doc.ttft_ns));
      await plot(chartDiv(grid, "ttft", 300), [{ type: "histogram", x: doc.ttft_ns.map((v) => v / tu.div), marker: { color: PALETTE[3] } }],
        { title: { text: `time to first token (${doc.ttft_ns.length} streams)`, x: 0.02 }, xaxis: { title: tu.label }, yaxis: { title: "streams" } });
    }
    const missing = [doc.ttft_ns.length ? "" : "no streamed responses, so no time to first token",
      doc.tokens_per_s.length ? "" : "no token counts, so no tokens/s (return an OpenAI-style usage, or ci.mark(\"tokens\", n))"].filter(Boolean);
    if (missing.length) m.appendChild($(`<p class="muted" id="req-missing">In this session: ${esc(missing.join("; "))}.</p>`));
    if (doc.tokens_per_s.length) {
      await plot(chartDiv(grid, "tps", 300), [{ type: "histogram", x: doc.tokens_per_s, marker: { color: PALETTE[2] } }],
        { title: { text: `tokens/s (${doc.tokens_per_s.length} requests)`, x: 0.02 }, xaxis: { title: "tokens/s" }, yaxis: { title: "requests" } });
    }
    m.appendChild($("<h2>Slowest requests</h2>"));
    const rows = doc.slowest.map((r) => {
      const pad = Math.max(1000, (r.end - r.start) * 0.1);
      return `<tr><td><a href="/session/${sid}/timeline?t0=${Math.max(0, Math.floor(r.start - pad))}&t1=${Math.ceil(r.end + pad)}&focus=${r.start}-${r.end}"><code>${esc(r.request_id || "?")}</code></a></td>
        <td class="num">${fmtNs(r.latency_ns)}</td><td class="num">${fmtNs(r.ttft_ns)}</td><td class="num">${r.tokens ?? "–"}</td>
        <td class="num">${r.tokens_per_s == null ? "–" : r.tokens_per_s.toFixed(1)}</td><td>${esc(r.stream_end || "")}</td><td class="error">${esc(r.error || "")}</td></tr>`;
    }).join("");
    m.appendChild($(`<table id="slowest"><thead><tr><th>Request</th><th class="num">Latency</th><th class="num">TTFT</th><th class="num">Tokens</th>
      <th class="num">Tokens/s</th><th>Stream end</th><th>Error</th></tr></thead><tbody>${rows}</tbody></table>`));
  }

  // ------------------------------------------------------------------------------ ranks
  async function ranksPage() {
    const run = body().run;
    document.getElementById("nav").innerHTML = `<a href="/">Runs</a><a class="active">Run ${esc(run)}</a>`;
    const doc = await api(`/api/run/${encodeURIComponent(run)}/ranks`);
    const m = main();
    m.innerHTML = `<h1>Run ${esc(run)}: ranks</h1><p class="muted">Compared on <code>${esc(doc.step || "?")}</code> spans. Median rank's median step: ${fmtNs(doc.median_p50_ns)}. A rank more than ${Math.round(100 * doc.threshold)}% slower is flagged as a straggler.</p>`;
    const labels = doc.ranks.map((r) => "rank " + (r.rank ?? "?"));
    const unit = unitOf(Math.max(...doc.ranks.map((r) => r.p95_ns ?? 0)));
    await plot(chartDiv(m, "ranks", 360), [
      { type: "bar", name: "p50 step (red: straggler)", x: labels, y: doc.ranks.map((r) => (r.p50_ns ?? 0) / unit.div), marker: { color: doc.ranks.map((r) => r.straggler ? "#ef4444" : PALETTE[0]) } },
      { type: "bar", name: "p95 step", x: labels, y: doc.ranks.map((r) => (r.p95_ns ?? 0) / unit.div), marker: { color: PALETTE[5] } },
      { type: "scatter", mode: "markers", name: "data_load share of step time", x: labels, y: doc.ranks.map((r) => 100 * (r.data_load_share ?? 0)), yaxis: "y2", marker: { size: 12, color: PHASE_COLORS.data_load, symbol: "diamond" } },
    ], { barmode: "group", margin: { l: 60, r: 80, t: 36, b: 44 }, yaxis: { title: unit.label },
      yaxis2: { title: "data_load %", overlaying: "y", side: "right", range: [0, 105], tickmode: "array", tickvals: [0, 25, 50, 75, 100], showgrid: false },
      legend: { orientation: "h", y: 1.12 } });
    const rows = doc.ranks.map((r) => `<tr><td>${r.rank ?? "?"}</td><td><a href="/session/${r.session}/steps"><code>${r.session.slice(0, 12)}</code></a></td>
      <td class="num">${r.steps}</td><td class="num">${fmtNs(r.p50_ns)}</td><td class="num">${fmtNs(r.p95_ns)}</td><td class="num">${fmtNs(r.max_ns)}</td>
      <td class="num">${r.data_load_share == null ? "–" : (100 * r.data_load_share).toFixed(1) + "%"}</td>
      <td>${r.straggler ? `<span class="badge crashed">straggler ${r.vs_median.toFixed(2)}×</span>` : (r.vs_median ? r.vs_median.toFixed(2) + "×" : "")}</td></tr>`).join("");
    m.appendChild($(`<table id="ranks-table"><thead><tr><th>Rank</th><th>Session</th><th class="num">Steps</th><th class="num">p50</th><th class="num">p95</th><th class="num">max</th><th class="num">data_load</th><th>vs median</th></tr></thead><tbody>${rows}</tbody></table>`));
  }

  const PAGES = { runs: runsPage, timeline: timelinePage, steps: stepsPage, marks: marksPage, snapshots: snapshotsPage, requests: requestsPage, ranks: ranksPage };

  function start() {  // called at the end of the body: the page's DOM is there, plotly.js may not be yet
    const page = PAGES[document.body.dataset.page];
    page().then(() => { document.body.dataset.ready = "1"; }).catch((e) => { fail(e); document.body.dataset.ready = "error"; });
  }

  return { start, fmtNs };
})();
