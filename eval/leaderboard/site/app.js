// The leaderboard page. Reads window.LEADERBOARD (data.js, written by eval/leaderboard/render.py)
// and builds every table and Plotly chart in the browser. Plain JS with no build step, because the
// folder has to open straight from disk (file://) with no server and no network.
//
// Text from the data (prompts, config values, messages) only ever goes through textContent, never
// innerHTML: a prompt is free text and must not become markup.
"use strict";

(function () {
  const DATA = window.LEADERBOARD || {};
  const RUNS = Array.isArray(DATA.runs) ? DATA.runs : [];
  const DIRECTIONS = DATA.directions || {};
  const DASH = "–";
  // A short modebar (zoom, pan, reset, save as PNG) so it does not cover the plot's title.
  const PLOT_CONFIG = {displaylogo: false, responsive: true,
                       modeBarButtonsToRemove: ["select2d", "lasso2d", "zoomIn2d", "zoomOut2d", "autoScale2d"]};
  // One colour per LoRA series (adapter group x scale); the base is always grey.
  const PALETTE = ["#2b59c3", "#d9822b", "#18794e", "#8e44ad", "#c0262d", "#0f8b8d"];
  const BASE_COLOUR = "#667085";

  const state = {
    runId: RUNS.length ? RUNS[0].id : null,  // runs come newest first: the newest is the default
    sortKey: null,
    sortDir: 1,
    filter: "",
    variant: null,     // the LoRA variant compared with the base in the grid
    withLora: false,   // the grid toggle: false shows the base, true the LoRA variant
  };

  // ------------------------------------------------------------------ small helpers

  const $ = (id) => document.getElementById(id);

  // el("td", {class: "num", text: "1.2"}, child, ...): the only way this file makes elements.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const numOrNull = (v) => (isNum(v) ? v : null);

  // Four significant digits; exponent form only where fixed notation would hide the number.
  function fmt(v) {
    if (!isNum(v)) return DASH;
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
    return String(Number(v.toPrecision(4)));
  }
  const fmtSigned = (v) => (isNum(v) ? (v > 0 ? "+" : "") + fmt(v) : DASH);
  const interval = (lo, hi) => (isNum(lo) && isNum(hi) ? `[${fmt(lo)}, ${fmt(hi)}]` : "");

  function fmtBytes(n) {
    if (!isNum(n)) return DASH;
    const gib = n / 2 ** 30;
    return gib >= 1 ? `${gib.toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`;
  }

  // "2026-12-02T14:00:00+00:00" -> "2026-12-02 14:00:00" in UTC. Plotly's date axis has no time
  // zones and does not parse offsets, so every time is shown (and labelled) as UTC.
  function utc(iso) {
    const t = Date.parse(iso);
    return Number.isFinite(t) ? new Date(t).toISOString().replace("T", " ").slice(0, 19) : null;
  }
  const shortTime = (iso) => (utc(iso) ? utc(iso).slice(0, 16) : (iso || DASH));

  function directionWord(metric) {
    const d = DIRECTIONS[metric];
    return d > 0 ? "higher is better" : d < 0 ? "lower is better" : "";
  }
  const directionArrow = (metric) => ({1: " ↑", "-1": " ↓"}[String(Math.sign(DIRECTIONS[metric] || 0))] || "");

  // Names in order of first appearance: metric names are open-ended, nothing is hard-coded.
  function unionKeys(objects) {
    const seen = new Set();
    for (const o of objects) for (const k of Object.keys(o || {})) seen.add(k);
    return [...seen];
  }

  function purgePlots(container) {
    for (const gd of container.querySelectorAll(".js-plotly-plot")) Plotly.purge(gd);
  }

  // ------------------------------------------------------------------ variants and deltas

  const variantsOf = (run) => (Array.isArray(run.variants) ? run.variants : []);
  const baseOf = (run) => variantsOf(run).find((v) => v.name === "base") || null;
  const lorasOf = (run) => variantsOf(run).filter((v) => v.name !== "base");
  const stepOf = (v) => (isNum(v.step) ? v.step : -Infinity);

  // The run's headline LoRA variant: the last checkpoint, at scale 1 where there is a choice.
  function finalLora(run) {
    let best = null;
    for (const v of lorasOf(run)) {
      if (best === null || stepOf(v) > stepOf(best) ||
          (stepOf(v) === stepOf(best) && (v.scale === 1 || best.scale !== 1))) best = v;
    }
    return best;
  }
  // What the runs table and the history show for a run; the base when no LoRA was evaluated.
  const headlineOf = (run) => finalLora(run) || baseOf(run);
  const metricOf = (variant, name) => ((variant && variant.metrics) || {})[name] || null;
  const deltaOf = (variant, name) => ((variant && variant.delta_vs_base) || {})[name] || null;

  // "sig", "ns" or null (unknown). The interval decides when there is one; the producer's flag
  // only when there is not (e.g. a test with no interval).
  function significance(delta) {
    if (!delta) return null;
    if (isNum(delta.lo) && isNum(delta.hi)) return delta.lo <= 0 && delta.hi >= 0 ? "ns" : "sig";
    if (delta.significant === true) return "sig";
    if (delta.significant === false) return "ns";
    return null;
  }

  // A delta with its interval; green/red only when significant and the direction is known, and
  // "n.s." written out so the mark survives without colour.
  function deltaNode(metric, delta) {
    if (!delta || !isNum(delta.value)) return el("span", {class: "ns", text: DASH});
    const sig = significance(delta);
    const dir = DIRECTIONS[metric] || 0;
    let cls = sig === "ns" ? "ns" : "";
    if (sig === "sig" && dir) cls = delta.value * dir > 0 ? "better" : "worse";
    return el("span", {class: `delta ${cls}`},
      fmtSigned(delta.value),
      interval(delta.lo, delta.hi) ? el("span", {class: "interval", text: " " + interval(delta.lo, delta.hi)}) : null,
      sig === "ns" ? el("span", {class: "ns-mark", text: " n.s."}) : null);
  }

  function valueNode(stat) {
    if (!stat || !isNum(stat.value)) return DASH;
    const iv = interval(stat.lo, stat.hi);
    return el("span", {}, fmt(stat.value), iv ? el("span", {class: "interval", text: " " + iv}) : null);
  }

  // ------------------------------------------------------------------ runs table

  const headlineMetrics = unionKeys(RUNS.map((r) => {
    const v = headlineOf(r);
    return Object.assign({}, v && v.metrics, v && v.delta_vs_base);
  }));

  // Each column: how to sort it (value) and how to show it (cell).
  const COLUMNS = [
    {key: "id", label: "run", value: (r) => r.id, cell: (r) => el("td", {class: "mono", text: r.id})},
    {key: "bench", label: "bench", value: (r) => r.bench, cell: (r) => el("td", {text: r.bench || DASH})},
    {key: "started", label: "started (UTC)", value: (r) => numOrNull(Date.parse(r.started)),
     cell: (r) => el("td", {class: "mono", text: shortTime(r.started)})},
    {key: "status", label: "status", value: (r) => r.status,
     cell: (r) => el("td", {class: "status", text: r.status === "regressed" ? "⚠ regressed" : (r.status || DASH)})},
    {key: "git", label: "git", value: (r) => (r.git || {}).sha || null, cell: gitCell},
  ];
  for (const m of headlineMetrics) {
    COLUMNS.push({key: `m:${m}`, label: m + directionArrow(m), title: directionWord(m),
                  value: (r) => numOrNull((metricOf(headlineOf(r), m) || {}).value),
                  cell: (r) => el("td", {class: "num"}, valueNode(metricOf(headlineOf(r), m)))});
    COLUMNS.push({key: `d:${m}`, label: `Δ ${m}`, title: `final LoRA checkpoint minus base, ${directionWord(m)}`,
                  value: (r) => (finalLora(r) ? numOrNull((deltaOf(finalLora(r), m) || {}).value) : null),
                  cell: (r) => el("td", {class: "num"}, finalLora(r) ? deltaNode(m, deltaOf(finalLora(r), m)) : DASH)});
  }
  COLUMNS.push(
    {key: "samples_per_s", label: "samples/s", value: (r) => numOrNull((r.perf || {}).samples_per_s),
     cell: (r) => el("td", {class: "num", text: fmt((r.perf || {}).samples_per_s)})},
    {key: "mfu", label: "MFU", value: (r) => numOrNull((r.perf || {}).mfu),
     cell: (r) => el("td", {class: "num", title: (r.perf || {}).mfu_note || null, text: fmt((r.perf || {}).mfu)})});

  function gitCell(run) {
    const git = run.git || {};
    const td = el("td", {class: "mono", title: git.sha || "not a git checkout"}, git.sha ? git.sha.slice(0, 10) : DASH);
    if (git.dirty) td.append(el("span", {class: "dirty", title: "uncommitted changes", text: " +dirty"}));
    return td;
  }

  // Numbers numerically, text naturally ("run-9" before "run-10"); missing values last in both
  // directions, because "no number" is never the best or the worst.
  function compareRuns(a, b, column) {
    const x = column.value(a), y = column.value(b);
    const xMissing = x === null || x === undefined || x === "";
    const yMissing = y === null || y === undefined || y === "";
    if (xMissing || yMissing) return xMissing === yMissing ? 0 : xMissing ? 1 : -1;
    const c = typeof x === "number" && typeof y === "number"
      ? x - y : String(x).localeCompare(String(y), undefined, {numeric: true});
    return c * state.sortDir;
  }

  function visibleRuns() {
    const needle = state.filter.trim().toLowerCase();
    const rows = RUNS.filter((r) => !needle ||
      [r.id, r.bench, r.status, (r.git || {}).sha].some((s) => String(s || "").toLowerCase().includes(needle)));
    const column = COLUMNS.find((c) => c.key === state.sortKey);
    // Array.prototype.sort is stable: equal rows keep the data's newest-first order.
    return column ? rows.sort((a, b) => compareRuns(a, b, column)) : rows;
  }

  function renderRunsHead() {
    const tr = $("runs").tHead.rows[0];
    tr.replaceChildren(...COLUMNS.map((c) => el("th", {
      "data-key": c.key, title: c.title || null, tabindex: 0,
      "aria-sort": c.key === state.sortKey ? (state.sortDir > 0 ? "ascending" : "descending") : null,
      onclick: () => sortBy(c.key),
      onkeydown: (e) => { if (e.key === "Enter") sortBy(c.key); },
    }, c.label)));
  }

  function sortBy(key) {
    // The same header again reverses the order; a new header starts ascending.
    state.sortDir = state.sortKey === key ? -state.sortDir : 1;
    state.sortKey = key;
    renderRunsHead();
    renderRunsBody();
  }

  function renderRunsBody() {
    const tbody = $("runs").tBodies[0];
    if (!RUNS.length) {
      tbody.replaceChildren(el("tr", {}, el("td", {class: "empty", colspan: COLUMNS.length, text: "no runs recorded yet"})));
      return;
    }
    const rows = visibleRuns().map((r) => el("tr", {
      class: `run-row status-${r.status || "unknown"}` + (r.id === state.runId ? " selected" : ""),
      "data-run-id": r.id, tabindex: 0,
      onclick: () => select(r.id),
      onkeydown: (e) => { if (e.key === "Enter") select(r.id); },
    }, COLUMNS.map((c) => c.cell(r))));
    tbody.replaceChildren(...(rows.length ? rows
      : [el("tr", {}, el("td", {class: "empty", colspan: COLUMNS.length, text: "no run matches the filter"}))]));
  }

  function select(runId) {
    if (runId === state.runId) return;
    state.runId = runId;
    state.variant = null;  // the new run's final checkpoint, see renderGrid
    renderRunsBody();
    renderDetail();
  }

  // ------------------------------------------------------------------ run detail

  const selectedRun = () => RUNS.find((r) => r.id === state.runId) || null;

  function kvList(pairs) {
    return el("dl", {class: "kv"}, pairs.flatMap(([k, v]) => [el("dt", {text: k}), el("dd", {}, v)]));
  }

  // Nested values (hardware's GPU list, a sha256 map) as one readable line each.
  function plain(value) {
    if (value === null || value === undefined || value === "") return DASH;
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }
  const objectList = (obj) => (obj && Object.keys(obj).length
    ? kvList(Object.entries(obj).map(([k, v]) => [k, el("span", {class: "mono", text: plain(v)})])) : DASH);

  function renderPerf(run) {
    const perf = run.perf || {};
    const peak = perf.peak_memory_bytes || {};
    $("detail-title").textContent = `${run.id} (${run.status || "unknown"})`;
    $("perf").replaceChildren(...kvList([
      ["samples/s", fmt(perf.samples_per_s)],
      ["step seconds", fmt(perf.step_seconds)],
      ["MFU", fmt(perf.mfu) + (perf.mfu_note ? ` (${perf.mfu_note})` : "")],
      ["peak memory", Object.keys(peak).length
        ? Object.entries(peak).map(([rank, n]) => `rank ${rank}: ${fmtBytes(n)}`).join(", ") : DASH],
    ]).childNodes);
  }

  // Checkpoints of one adapter (group) at one LoRA scale form one line over the training steps.
  function loraSeries(run) {
    const series = new Map();
    const scales = new Set(lorasOf(run).map((v) => v.scale));
    for (const v of lorasOf(run).filter((x) => isNum(x.step)).sort((a, b) => a.step - b.step)) {
      let label = v.group || "LoRA";
      if (scales.size > 1) label += ` ×${fmt(v.scale)}`;
      if (!series.has(label)) series.set(label, []);
      series.get(label).push(v);
    }
    return series;
  }

  // The interval as a band: the upper bound drawn invisibly, the lower one filled up to it.
  function bandTraces(x, lo, hi, colour, group) {
    if (!lo.some(isNum) || !hi.some(isNum)) return [];
    const common = {x, mode: "lines", line: {width: 0, color: colour}, hoverinfo: "skip",
                    showlegend: false, legendgroup: group};
    return [{...common, y: hi}, {...common, y: lo, fill: "tonexty", fillcolor: colour + "26"}];
  }

  function plotLayout(title, xTitle, yTitle, extra) {
    return Object.assign({
      title: {text: title, font: {size: 13}, x: 0.02, xanchor: "left"},
      margin: {l: 55, r: 12, t: 36, b: 70},
      xaxis: {title: {text: xTitle}},
      yaxis: {title: {text: yTitle}},
      legend: {orientation: "h", y: -0.3, font: {size: 11}},
      font: {family: "system-ui, sans-serif", size: 11},
    }, extra || {});
  }
  const noData = (text) => ({annotations: [{text, showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5}]});

  function renderMetricPlots(run) {
    const box = $("metric-plots");
    purgePlots(box);
    box.replaceChildren();
    const base = baseOf(run);
    const series = loraSeries(run);
    const maxStep = Math.max(0, ...[...series.values()].flat().map((v) => v.step));
    const names = unionKeys(variantsOf(run).map((v) => v.metrics));
    if (!names.length) box.append(el("p", {class: "muted plot-note", text: "no metrics recorded for this run"}));
    names.forEach((metric, i) => {
      const div = el("div", {class: "plot", id: `metric-plot-${i}`, "data-metric": metric});
      box.append(div);
      const traces = [];
      let colourIndex = 0;
      for (const [label, variants] of series) {
        const colour = PALETTE[colourIndex++ % PALETTE.length];
        const stats = variants.map((v) => metricOf(v, metric) || {});
        const x = variants.map((v) => v.step);
        traces.push(...bandTraces(x, stats.map((s) => numOrNull(s.lo)), stats.map((s) => numOrNull(s.hi)), colour, label));
        traces.push({x, y: stats.map((s) => numOrNull(s.value)), mode: "lines+markers", name: label, legendgroup: label,
                     line: {color: colour}, text: variants.map((v) => v.name),
                     hovertemplate: "%{text}<br>step %{x}: %{y}<extra></extra>"});
      }
      // The base is step 0 of training: a flat line (and band) across the checkpoints' range.
      const b = metricOf(base, metric);
      if (b && isNum(b.value)) {
        const x = maxStep > 0 ? [0, maxStep] : [0];
        const flat = (v) => x.map(() => numOrNull(v));
        traces.push(...bandTraces(x, flat(b.lo), flat(b.hi), BASE_COLOUR, "base"));
        traces.push({x, y: flat(b.value), mode: x.length > 1 ? "lines" : "markers", name: "base", legendgroup: "base",
                     line: {color: BASE_COLOUR, dash: "dash"}, hovertemplate: "base: %{y}<extra></extra>"});
      }
      const word = directionWord(metric);
      Plotly.newPlot(div, traces, plotLayout(metric + (word ? ` (${word})` : ""), "training step", metric,
                                             traces.length ? {} : noData("no values")), PLOT_CONFIG);
    });
  }

  function renderLossPlot(run) {
    const points = (Array.isArray(run.loss) ? run.loss : []).filter((p) => Array.isArray(p) && isNum(p[1]));
    const traces = points.length ? [{x: points.map((p) => p[0]), y: points.map((p) => p[1]), mode: "lines",
                                     name: "loss", line: {color: PALETTE[0]}}] : [];
    Plotly.newPlot($("loss-plot"), traces,
                   plotLayout("training loss", "training step", "loss",
                              Object.assign({showlegend: false}, points.length ? {} : noData("no training loss recorded"))),
                   PLOT_CONFIG);
  }

  // ------------------------------------------------------------------ deltas table

  function renderDeltas(run) {
    const table = $("deltas");
    const variants = [baseOf(run), ...lorasOf(run)].filter(Boolean);
    const metrics = unionKeys(variants.flatMap((v) => [v.metrics, v.delta_vs_base]));
    table.tHead.replaceChildren(el("tr", {}, ["variant", "step", "scale", "metric", "value [interval]",
                                              "Δ vs base", "Δ vs previous checkpoint"].map((t) => el("th", {text: t}))));
    if (!variants.length || !metrics.length) {
      table.tBodies[0].replaceChildren(el("tr", {}, el("td", {colspan: 7, class: "empty", text: "no variants evaluated"})));
      return;
    }
    const rows = [];
    for (const v of variants) {
      const previous = v.delta_vs_previous || null;
      metrics.forEach((m, i) => {
        // The variant's own cells once, spanning its metric rows.
        const lead = i === 0 ? [
          el("td", {class: "mono", rowspan: metrics.length, text: v.name}),
          el("td", {class: "num", rowspan: metrics.length, text: isNum(v.step) ? String(v.step) : DASH}),
          el("td", {class: "num", rowspan: metrics.length, text: fmt(v.scale)}),
        ] : [];
        const stat = metricOf(v, m);
        const prev = previous && (previous.metrics || {})[m];
        rows.push(el("tr", {"data-variant": v.name, "data-metric": m}, lead,
          el("td", {text: m + directionArrow(m)}),
          el("td", {class: "num"}, valueNode(stat), stat && isNum(stat.n) ? el("span", {class: "interval", text: ` n=${stat.n}`}) : null),
          el("td", {class: "num"}, v.name === "base" ? DASH : deltaNode(m, deltaOf(v, m))),
          el("td", {class: "num"}, prev ? deltaNode(m, prev) : DASH,
             prev ? el("span", {class: "interval", text: ` vs ${previous.against}`}) : null)));
      });
    }
    table.tBodies[0].replaceChildren(...rows);
  }

  // ------------------------------------------------------------------ same-seed grid

  const sampleKey = (s) => `${s.prompt_id}\u0000${s.seed}`;

  function samplesByVariant(run) {
    const out = new Map();
    for (const s of Array.isArray(run.samples) ? run.samples : []) {
      if (!out.has(s.variant)) out.set(s.variant, new Map());
      out.get(s.variant).set(sampleKey(s), s);
    }
    return out;
  }

  function mediaNode(sample) {
    if (!sample) return el("span", {class: "missing", text: "no sample"});
    if (!sample.media) return el("span", {class: "missing", title: sample.missing || "", text: "missing"});
    const video = sample.kind === "video" || /\.(mp4|webm|mkv)$/i.test(sample.media);
    const media = video
      ? el("video", {src: sample.media, controls: true, muted: true, loop: true, preload: "metadata"})
      : el("img", {src: sample.media, alt: sample.prompt || "", loading: "lazy"});
    if (video) media.muted = true;  // the attribute alone does not mute a script-made element
    return el("div", {}, media, el("a", {href: sample.media, target: "_blank", text: "open"}));
  }

  function renderGrid(run) {
    const loras = lorasOf(run);
    if (!loras.some((v) => v.name === state.variant)) state.variant = (finalLora(run) || {}).name || null;
    const select = $("variant-select");
    select.replaceChildren(...loras.map((v) => el("option", {value: v.name, selected: v.name === state.variant, text: v.name})));
    select.disabled = !loras.length;
    $("lora-toggle").disabled = !loras.length;
    if (!loras.length) state.withLora = false;
    renderGridCells(run);
  }

  // The toggled column's cells with their row keys, so that the toggle swaps only that column and
  // the side-by-side videos keep playing.
  let toggledCells = [];

  // One row per prompt and seed: the base and the chosen LoRA variant side by side, then one more
  // column that the toggle swaps between the two in place, so the eye catches exactly what the
  // adapter changed. A run with no LoRA variant shows the base column only.
  function renderGridCells(run) {
    const lora = state.variant;  // null: the run has no LoRA variant
    const byVariant = samplesByVariant(run);
    $("grid-showing").textContent = lora ? `base and ${lora} side by side; the last column toggles between them`
                                         : "no LoRA variant in this run: showing the base only";

    // Rows: every prompt and seed of the base or the chosen variant, in the data's order.
    const rows = new Map();
    for (const name of lora ? ["base", lora] : ["base"]) {
      for (const [key, s] of (byVariant.get(name) || new Map())) if (!rows.has(key)) rows.set(key, s);
    }
    const heads = [el("th", {text: "prompt"}), el("th", {text: "seed"}),
                   el("th", {class: "col-base"}, "without LoRA", el("div", {class: "muted mono", text: "base"}))];
    if (lora) heads.push(el("th", {class: "col-lora"}, "with LoRA", el("div", {class: "muted mono", text: lora})),
                         el("th", {class: "col-toggle"}));
    toggledCells = [];
    const table = $("grid");
    table.tHead.replaceChildren(el("tr", {}, heads));
    table.tBodies[0].replaceChildren(...(rows.size ? [...rows].map(([key, s]) => {
      const cell = (cls, variant) => fillCell(el("td", {class: `grid-media ${cls}`}), variant, s,
                                              (byVariant.get(variant) || new Map()).get(key));
      let toggled = null;
      if (lora) {
        toggled = el("td", {class: "grid-media grid-cell"});
        toggledCells.push({key, td: toggled, row: s});
      }
      return el("tr", {"data-sample-id": s.sample_id},
        el("td", {}, s.prompt || DASH, el("div", {class: "muted mono", text: s.prompt_id || ""})),
        el("td", {class: "num", text: String(s.seed)}),
        cell("grid-base", "base"),
        lora ? cell("grid-lora", lora) : null,
        toggled);
    }) : [el("tr", {}, el("td", {colspan: heads.length, class: "empty", text: "no samples recorded for this run"}))]));
    renderToggled(run);
  }

  // (Re)fill one media cell; data-* say which sample it shows (the tests read them).
  function fillCell(td, variant, row, sample) {
    td.dataset.variant = variant;
    td.dataset.promptId = row.prompt_id ?? "";
    td.dataset.seed = String(row.seed);
    if (sample && sample.sample_id != null) td.dataset.sampleId = sample.sample_id;
    else delete td.dataset.sampleId;
    td.replaceChildren(mediaNode(sample));
    return td;
  }

  // The toggle: its label says what the toggled column shows now; only that column changes.
  function renderToggled(run) {
    const lora = state.variant;
    const withLora = Boolean(lora) && state.withLora;
    const shown = withLora ? lora : "base";
    const toggle = $("lora-toggle");
    toggle.textContent = !lora ? "no LoRA variant" : withLora ? "showing: with LoRA" : "showing: without LoRA";
    toggle.setAttribute("aria-pressed", String(withLora));
    toggle.title = !lora ? "" : withLora ? `the last column shows ${lora}: click for the base`
                                         : `the last column shows the base: click for ${lora}`;
    const head = $("grid").querySelector("th.col-toggle");
    if (head) head.replaceChildren(`toggled: ${withLora ? "with" : "without"} LoRA`,
                                   el("div", {class: "muted mono", text: shown}));
    const samples = samplesByVariant(run).get(shown) || new Map();
    for (const {key, td, row} of toggledCells) fillCell(td, shown, row, samples.get(key));
  }

  // ------------------------------------------------------------------ history

  function renderHistory(run) {
    const box = $("history");
    purgePlots(box);
    box.replaceChildren();
    $("history-bench").textContent = run.bench ? `(bench ${run.bench})` : "";
    const series = RUNS.filter((r) => r.bench === run.bench)
      .sort((a, b) => (Date.parse(a.started) || 0) - (Date.parse(b.started) || 0));
    const x = series.map((r) => utc(r.started));
    const ids = series.map((r) => r.id);
    // Regressed runs in red, failed ones grey; the selected run drawn larger.
    const marker = {
      color: series.map((r) => (r.status === "regressed" ? "#c0262d" : r.status === "failed" ? BASE_COLOUR : PALETTE[0])),
      size: series.map((r) => (r.id === run.id ? 13 : 8)),
    };
    const panels = unionKeys(series.map((r) => (headlineOf(r) || {}).metrics)).map((m) => ({
      title: m + (directionWord(m) ? ` (${directionWord(m)})` : ""), y: m,
      stats: series.map((r) => metricOf(headlineOf(r), m) || {}),
    }));
    panels.push({title: "training throughput", y: "samples/s",
                 stats: series.map((r) => ({value: (r.perf || {}).samples_per_s}))});
    panels.forEach((p, i) => {
      const div = el("div", {class: "plot", id: `history-plot-${i}`});
      box.append(div);
      const y = p.stats.map((s) => numOrNull(s.value));
      const up = p.stats.map((s, j) => (isNum(s.hi) && isNum(y[j]) ? s.hi - y[j] : null));
      const down = p.stats.map((s, j) => (isNum(s.lo) && isNum(y[j]) ? y[j] - s.lo : null));
      const trace = {x, y, text: ids, mode: "lines+markers", marker, line: {color: PALETTE[0]},
                     hovertemplate: "%{text}<br>%{y}<extra></extra>"};
      if (up.some(isNum)) trace.error_y = {type: "data", symmetric: false, array: up, arrayminus: down, thickness: 1};
      Plotly.newPlot(div, [trace], plotLayout(p.title, "started (UTC)", p.y,
                                              Object.assign({showlegend: false}, y.some(isNum) ? {} : noData("no values"))),
                     PLOT_CONFIG).then((gd) => {
        // A point is a run: clicking it selects that run (after Plotly finishes its own handler,
        // since selecting re-renders this very plot).
        gd.on("plotly_click", (ev) => setTimeout(() => select(ev.points[0].text), 0));
      });
    });
    const alerts = series.slice().reverse().flatMap((r) => (r.alerts || []).map((a) => ({run: r, alert: a})));
    box.append(el("div", {class: "alerts"}, el("h3", {text: "alerts"}),
      alerts.length ? el("ul", {id: "alerts"}, alerts.map(({run: r, alert: a}) => el("li", {},
        el("span", {class: "mono", text: r.id}), `: ${a.message || "regression"} `,
        el("span", {class: "muted", text: `(${a.metric} of ${a.variant}: ${fmt(a.value)} vs baseline ${fmt(a.baseline)}, threshold ${fmt(a.threshold)})`}))))
        : el("p", {class: "muted", text: "no alerts"})));
  }

  // ------------------------------------------------------------------ provenance

  function renderProvenance(run) {
    const git = run.git || {};
    const model = run.model || {};
    const seeds = run.seeds || {};
    const dirty = git.dirty === true ? "yes: uncommitted changes" : git.dirty === false ? "no" : DASH;
    $("provenance").replaceChildren(
      kvList([
        ["run", el("span", {class: "mono", text: run.id})],
        ["started", run.started || DASH],
        ["finished", run.finished || DASH],
        ["git sha", el("span", {class: "mono", text: git.sha || DASH})],
        ["dirty", dirty],
        ["config hash", el("span", {class: "mono", text: run.config_hash || DASH})],
        ["model", `${model.family || DASH}: ${model.path || DASH}`],
        ["model sha256", objectList(model.sha256)],
        ["adapter sha256", objectList(run.adapters)],
        ["dataset hash", el("span", {class: "mono", text: run.dataset_hash || DASH})],
        ["seeds", Object.keys(seeds).length ? Object.entries(seeds).map(([k, v]) => `${k} ${v}`).join(", ") : DASH],
        ["libraries", objectList(run.libraries)],
        ["hardware", objectList(run.hardware)],
      ]),
      el("details", {}, el("summary", {text: "resolved config"}),
         el("pre", {text: JSON.stringify(run.config || {}, null, 2)})));
  }

  // ------------------------------------------------------------------ wiring

  function renderDetail() {
    const run = selectedRun();
    $("selected-run").hidden = !run;
    if (!run) return;
    renderPerf(run);
    renderMetricPlots(run);
    renderLossPlot(run);
    renderDeltas(run);
    renderGrid(run);
    renderHistory(run);
    renderProvenance(run);
  }

  function init() {
    $("generated").textContent = `generated ${DATA.generated || DASH} · ${RUNS.length} run${RUNS.length === 1 ? "" : "s"}`;
    $("filter").addEventListener("input", (e) => { state.filter = e.target.value; renderRunsBody(); });
    $("variant-select").addEventListener("change", (e) => { state.variant = e.target.value; renderGridCells(selectedRun()); });
    $("lora-toggle").addEventListener("click", () => { state.withLora = !state.withLora; renderToggled(selectedRun()); });
    renderRunsHead();
    renderRunsBody();
    renderDetail();
  }

  init();
})();
