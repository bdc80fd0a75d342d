// The pypelinin dashboard. It reads the router's JSON API (/api/...) and listens to the
// dashboard's event stream (/api/events, Server-Sent Events): each pushed change redraws
// what it concerns, and nothing polls while the stream is up (a slow refresh runs only
// while it is down). Nothing is loaded from elsewhere.
// Routes: #/ (pipelines), #/pipeline/ID (one pipeline; #/pipeline/ID/job/NAME focuses a
// job), #/schedules (schedules), #/schedules/NAME (one schedule and its grid), #/brokers
// (brokers, metrics). The schedule views live in schedules.js.
"use strict";

const FALLBACK_MS = 10000; // refresh period while the event stream is down
const PIPELINE_STATES = ["queued", "running", "succeeded", "failed", "cancelled"];
const JOB_STATES = ["queued", "running", "succeeded", "failed", "skipped", "cancelled", "skipped_done", "waiting"];
// The same colours as JobState::color and `pypelinin dot`.
const COLORS = {
  queued: "#e5e7eb",
  running: "#93c5fd",
  succeeded: "#86efac",
  failed: "#fca5a5",
  skipped: "#fde68a",
  cancelled: "#d1d5db",
  skipped_done: "#bbf7d0",
  waiting: "#c4b5fd",
};
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const MAX_DRAWN_JOBS = 400;

const $ = (selector, root = document) => root.querySelector(selector);
const view = $("#view");

// ---------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------

// What holds a job back, or what went wrong: a job waiting on a condition says what
// for; a queued one says why it is not running (its parents, a retry delay, the
// brokers, a pool, the queue), ahead of the error of its last attempt.
// A job's dispatch settings in a few words: its effective priority, its trigger rule
// when not the default, its pool, and whether its failure is allowed; `long` spells
// out the weight and its rule too (for tooltips).
// Pipelines on one page of the list.
const PAGE_ROWS = 200;

function settingsText(j, long) {
  const parts = [];
  if (j.priority !== undefined) {
    parts.push(long
      ? `priority ${j.priority} (weight ${j.priority_weight}, ${j.weight_rule})`
      : `p ${j.priority}`);
  }
  if (j.trigger_rule && (long || j.trigger_rule !== "all_success")) parts.push(j.trigger_rule);
  if (j.pool) parts.push(`pool ${j.pool}${j.pool_slots > 1 ? " ×" + j.pool_slots : ""}`);
  if (j.allow_failure) parts.push("allow_failure");
  return parts.join(" · ");
}

function whyText(j) {
  if (j.state === "waiting" && j.waiting_for) return "waiting for " + j.waiting_for;
  if (j.state === "queued" && j.waiting_for) {
    return j.error ? `${j.waiting_for} (last error: ${j.error})` : j.waiting_for;
  }
  return j.error || "";
}

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

function duration(ms) {
  if (ms == null) return "–";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const pad = (n) => String(n).padStart(2, "0");
  if (ms < 3600000) return `${Math.floor(ms / 60000)}m ${pad(Math.floor(ms / 1000) % 60)}s`;
  return `${Math.floor(ms / 3600000)}h ${pad(Math.floor(ms / 60000) % 60)}m`;
}

function clock(ms) {
  if (!ms) return "–";
  const d = new Date(ms);
  const time = d.toLocaleTimeString([], { hour12: false });
  return d.toDateString() === new Date().toDateString() ? time : `${d.toLocaleDateString()} ${time}`;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let k = 0;
  while (n >= 1024 && k < units.length - 1) { n /= 1024; k += 1; }
  return k === 0 ? `${n} B` : `${n.toFixed(1)} ${units[k]}`;
}

function truncate(text, max) {
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

const badge = (state) => `<span class="badge s-${esc(state)}">${esc(state)}</span>`;

function bar(fraction, kind = "") {
  const pct = Math.max(0, Math.min(100, Math.round((fraction || 0) * 100)));
  return `<div class="bar ${kind}"><span style="width:${pct}%"></span></div>`;
}

const load = (fraction) => (fraction > 0.9 ? "bad" : fraction > 0.7 ? "warn" : "");

// ---------------------------------------------------------------------------------
// The API and the refresh loop
// ---------------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  // A change made with a session echoes the session's CSRF value (the cookie is readable
  // by this page only; see the dashboard's auth module).
  const csrf = document.cookie.split("; ").find((c) => c.startsWith("pypelinin_csrf="));
  if (csrf && (options.method || "GET") !== "GET") headers["X-CSRF-Token"] = csrf.split("=")[1];
  const response = await fetch(path, { ...options, headers });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (response.status === 401 && path !== "/api/session") showSignIn();
  if (!response.ok) {
    const error = new Error((body && body.error) || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

let current = null;      // the view on screen: { refresh(generation), fail(error), on…(data) }
let generation = 0;      // bumped on every route change: late answers are dropped
let busy = false;
let again = false;
let fallback = 0;        // the slow refresh timer, while the stream is down

function setLive(ok, text) {
  const el = $("#live");
  el.className = "live " + (ok ? "ok" : "down");
  el.textContent = text;
}

// Each pushed event: the indicator says when the last one came, and counts them (in
// data-events, with data-stream telling whether the stream is open: for people and tests).
function alive() {
  setLive(true, "live · " + new Date().toLocaleTimeString([], { hour12: false }));
  const el = $("#live");
  el.dataset.events = String(Number(el.dataset.events || 0) + 1);
}

// Reads the current view again from the API (on a route change, a search, an action,
// a pushed change that concerns it, or the fallback timer).
async function refresh() {
  if (busy) { again = true; return; }
  busy = true;
  const gen = generation;
  try {
    await current.refresh(gen);
  } catch (error) {
    if (gen === generation) {
      if (error.status) {
        if (current.fail) current.fail(error);
      } else {
        setLive(false, "router unreachable: retrying");
      }
    }
  } finally {
    busy = false;
  }
  if (again) { again = false; refresh(); }
}

function showSummary(m) {
  const p = m.pipelines || {};
  const parts = [
    `<b>${p.running || 0}</b> running`,
    `<b>${p.queued || 0}</b> queued`,
    `<b>${p.failed || 0}</b> failed`,
    `<b>${m.brokers}</b> broker${m.brokers === 1 ? "" : "s"}`,
    `queue <b>${m.queue_depth}</b>`,
  ];
  $("#summary").innerHTML = parts.join(" · ");
}

async function refreshSummary() {
  try { showSummary(await api("/api/metrics")); } catch (_) { /* the live indicator tells */ }
}

// The event stream. On (re)connection the dashboard sends what it knows, so the view is
// read again then; after that each event carries a change.
function connect() {
  const source = new EventSource("/api/events");
  const on = (kind, handle) => source.addEventListener(kind, (e) => {
    let data;
    try { data = JSON.parse(e.data); } catch (_) { return; }
    alive();
    handle(data);
  });
  source.addEventListener("open", () => {
    clearInterval(fallback);
    fallback = 0;
    $("#live").dataset.stream = "open";
    setLive(true, "live");
    refresh();
  });
  source.addEventListener("error", () => {
    $("#live").dataset.stream = "down";
    if (!fallback) {
      setLive(false, "reconnecting…");
      fallback = setInterval(() => { refresh(); refreshSummary(); }, FALLBACK_MS);
    }
    // A refused stream is not retried by the browser: try again later.
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, FALLBACK_MS);
  });
  on("pipelines", (d) => { if (current.onPipelines) current.onPipelines(d); });
  on("metrics", (m) => { showSummary(m); if (current.onMetrics) current.onMetrics(m); });
  on("brokers", (b) => { if (current.onBrokers) current.onBrokers(b); });
  source.addEventListener("unreachable", () => setLive(false, "router unreachable: retrying"));
}

function route() {
  generation += 1;
  const hash = location.hash || "#/";
  const match = hash.match(/^#\/pipeline\/([0-9a-fA-F-]{36})(?:\/job\/(.+))?$/);
  const scheduleMatch = hash.match(/^#\/schedules\/(.+)$/);
  let tab = "pipelines";
  if (match) {
    const job = match[2] ? decodeURIComponent(match[2]) : null;
    current = pipelineView(match[1].toLowerCase(), job);
  } else if (hash === "#/schedules") {
    current = schedulesView();
    tab = "schedules";
  } else if (scheduleMatch) {
    current = scheduleView(decodeURIComponent(scheduleMatch[1]));
    tab = "schedules";
  } else if (hash === "#/brokers") {
    current = brokersView();
    tab = "brokers";
  } else if (hash === "#/notifications") {
    current = notificationsView();
    tab = "notifications";
  } else {
    current = pipelinesView();
  }
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.id === `nav-${tab}`);
  }
  window.scrollTo(0, 0);
  refresh();
}

window.addEventListener("hashchange", route);

// ---------------------------------------------------------------------------------
// #/ — the pipelines
// ---------------------------------------------------------------------------------

const filter = { q: "", state: "" };

function pipelinesView() {
  const options = PIPELINE_STATES.map(
    (s) => `<option value="${s}" ${s === filter.state ? "selected" : ""}>${s}</option>`,
  ).join("");
  view.innerHTML = `<section>
    <div class="toolbar">
      <h1>Pipelines</h1><span class="spacer"></span>
      <input id="search" type="search" placeholder="Search by id or state" autocomplete="off"
             value="${esc(filter.q)}" aria-label="search pipelines">
      <select id="state-filter" aria-label="state"><option value="">All states</option>${options}</select>
    </div>
    <table id="pipelines" class="grid">
      <thead><tr><th>Pipeline</th><th>State</th><th>Progress</th><th>Started</th>
        <th class="num">Duration</th></tr></thead>
      <tbody></tbody>
    </table>
    <div class="pager">
      <button id="newer" class="small" hidden>← Newest</button>
      <button id="older" class="small" hidden>Older →</button>
    </div>
  </section>`;
  // Pages go back by cursor (the last row's `seq`), so new pipelines never shift them.
  let before = null;
  let next = null;
  const restart = () => { before = null; refresh(); };
  $("#search").addEventListener("input", (e) => { filter.q = e.target.value.trim(); restart(); });
  $("#state-filter").addEventListener("change", (e) => { filter.state = e.target.value; restart(); });
  $("#older").addEventListener("click", () => { before = next; refresh(); });
  $("#newer").addEventListener("click", restart);
  $("#pipelines tbody").addEventListener("click", (e) => {
    const row = e.target.closest("tr[data-id]");
    if (row && !e.target.closest("a")) location.hash = `#/pipeline/${row.dataset.id}`;
  });

  return {
    async refresh(gen) {
      const params = new URLSearchParams({ limit: String(PAGE_ROWS) });
      if (filter.q) params.set("q", filter.q);
      if (filter.state) params.set("state", filter.state);
      if (before !== null) params.set("before", String(before));
      const data = await api(`/api/pipelines?${params}`);
      if (gen !== generation) return;
      next = data.next_before;
      $("#older").hidden = next === null || next === undefined;
      $("#newer").hidden = before === null;
      const rows = data.pipelines.map((p) => `<tr class="link" data-id="${esc(p.id)}">
        <td><a class="mono" href="#/pipeline/${esc(p.id)}">${esc(p.id)}</a></td>
        <td>${badge(p.state)}</td>
        <td class="meter">${bar(p.jobs ? p.done / p.jobs : 0, p.state === "failed" ? "bad" : "")}
            <small>${p.done}/${p.jobs} jobs</small></td>
        <td>${clock(p.submitted_ms)}</td>
        <td class="num">${duration(p.duration_ms)}</td>
      </tr>`).join("");
      const empty = filter.q || filter.state
        ? "No pipeline matches."
        : "No pipeline yet: submit one with <code>pypelinin submit FILE</code>.";
      $("#pipelines tbody").innerHTML = rows || `<tr><td colspan="5" class="empty">${empty}</td></tr>`;
    },
    fail(error) {
      $("#pipelines tbody").innerHTML = `<tr><td colspan="5" class="error">${esc(error.message)}</td></tr>`;
    },
    // Something in the list changed: read it again, with the search and filter applied
    // (an older page does not move: new pipelines are not on it).
    onPipelines() { if (before === null) refresh(); },
  };
}

// ---------------------------------------------------------------------------------
// #/pipeline/ID — one pipeline: facts, DAG, jobs, outputs, cancel and retry
// ---------------------------------------------------------------------------------

function pipelineView(id, job = null) {
  const legend = JOB_STATES.map((s) => `<span style="--c:${COLORS[s]}">${s}</span>`).join("");
  view.innerHTML = `<section>
    <p class="crumbs"><a href="#/">Pipelines</a> / pipeline</p>
    <div class="toolbar">
      <h1 class="mono" id="pipeline-id">${esc(id)}</h1>
      <span id="pipeline-state"></span>
      <span class="spacer"></span>
      <button id="retry" class="primary" disabled
              title="run the jobs that did not succeed again, keeping what succeeded">Retry failed jobs</button>
      <button id="cancel" class="danger" disabled title="stop running jobs, start no new ones">Cancel</button>
    </div>
    <div id="message" class="message" hidden></div>
    <div id="facts" class="facts"></div>
    <div class="card">
      <div id="dag" class="dag"></div>
      <div class="legend">${legend}</div>
    </div>
    <h2>Jobs <small>every attempt with its broker, times and error</small></h2>
    <table id="jobs" class="grid">
      <thead><tr><th>Job</th><th>Worker</th><th>State</th><th>Broker</th><th>Started</th>
        <th class="num">Duration</th><th class="num">Attempts</th><th>Error</th><th></th></tr></thead>
      <tbody></tbody>
    </table>
    <h2>Log <small id="log-of">click a job to see its stdout, stderr and log lines</small>
      <select id="log-attempt" hidden title="which attempt's log"></select></h2>
    <pre id="log" class="log" hidden></pre>
    <h2>Outputs <small>kept by the router for succeeded jobs</small></h2>
    <div id="outputs" class="muted">–</div>
  </section>`;

  let drawn = "";        // what the diagram shows, to redraw only on change
  let tabled = "";       // same for the job table
  let outputsOf = "";    // which succeeded jobs the outputs section shows
  let focused = job;       // a job named in the route is focused once the pipeline is drawn
  let final = false;     // whether the pipeline shown has ended (then only its own change matters)

  function message(text, isError = false) {
    const el = $("#message");
    el.hidden = !text;
    el.className = "message" + (isError ? " error" : "");
    el.textContent = text || "";
  }

  async function act(action, body) {
    $("#retry").disabled = true;
    $("#cancel").disabled = true;
    message(action === "cancel" ? "Cancelling…" : "Asking for a retry…");
    try {
      const status = await api(`/api/pipelines/${id}/${action}`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: body ? JSON.stringify(body) : "",
      });
      const what = action === "cancel" ? "Cancelled" : "Retry accepted";
      message(`${what}: the pipeline is ${status.state}.`);
    } catch (error) {
      message(error.message, true);
    }
    refresh();
  }

  // The focused job's captured log, read after the last line shown, every second
  // while its attempt runs (or, for the latest attempt, until the job is final).
  const log = { job: null, attempt: null, shown: null, after: 0, timer: 0, gen: 0 };

  function showLog(name, attempt = null) {
    clearTimeout(log.timer);
    Object.assign(log, { job: name, attempt, shown: null, after: 0, gen: log.gen + 1 });
    $("#log").textContent = "";
    $("#log").hidden = false;
    $("#log-of").textContent = `of ${name}`;
    pollLog(log.gen);
  }

  function logLine(l) {
    const lost = l.dropped ? `<span class="lost">[${esc(bytes(l.dropped))} dropped]</span>\n` : "";
    return `${lost}<span class="t">${esc(l.time)}</span> <span class="s s-${esc(l.stream)}">${esc(l.stream.padEnd(6))}</span> ${esc(l.text)}\n`;
  }

  async function pollLog(mine) {
    const gen = generation;
    if (mine !== log.gen) return;
    const q = `after=${log.after}` + (log.attempt ? `&attempt=${log.attempt}` : "");
    let page;
    try {
      page = await api(`/api/pipelines/${id}/jobs/${encodeURIComponent(log.job)}/logs?${q}`);
    } catch (error) {
      if (gen === generation && mine === log.gen) $("#log").textContent = error.message;
      return;
    }
    if (gen !== generation || mine !== log.gen) return;
    const el = $("#log");
    if (page.attempt !== log.shown) {
      // The first page, or a retry started: its log from its first line.
      const first = log.shown === null;
      log.shown = page.attempt;
      el.innerHTML = page.dropped_bytes
        ? `<span class="lost">[older ${esc(bytes(page.dropped_bytes))} dropped]</span>\n` : "";
      const select = $("#log-attempt");
      select.hidden = page.attempts < 2;
      select.innerHTML = `<option value="">latest attempt</option>` +
        Array.from({ length: page.attempts }, (_, k) =>
          `<option value="${k + 1}">attempt ${k + 1}</option>`).join("");
      select.value = log.attempt ? String(log.attempt) : "";
      if (!first && log.after > 0) { log.after = 0; pollLog(mine); return; }
    }
    if (page.attempt === 0) el.textContent = "Not started yet.";
    const atEnd = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
    if (page.lines.length) {
      el.insertAdjacentHTML("beforeend", page.lines.map(logLine).join(""));
      log.after = page.last_seq;
      if (atEnd) el.scrollTop = el.scrollHeight;
    } else if (page.attempt > 0 && !el.textContent) {
      el.textContent = page.finished ? "Nothing was logged." : "";
    }
    const done = page.finished && (log.attempt || page.job_final);
    if (!done) log.timer = setTimeout(() => pollLog(mine), 1000);
  }

  $("#log-attempt").addEventListener("change", (e) => {
    if (log.job) showLog(log.job, e.target.value ? Number(e.target.value) : null);
  });

  function focus(name) {
    if (name !== log.job) showLog(name);
    focused = name;
    for (const el of document.querySelectorAll("#jobs tr.focus, #dag .node.focus")) {
      el.classList.remove("focus");
    }
    const sel = `[data-job="${CSS.escape(name)}"]`;
    for (const el of document.querySelectorAll(`#jobs tr${sel}, #dag .node${sel}`)) {
      el.classList.add("focus");
    }
  }

  $("#retry").addEventListener("click", () => act("retry"));
  $("#cancel").addEventListener("click", () => act("cancel"));
  $("#jobs tbody").addEventListener("click", (e) => {
    const button = e.target.closest("button.retry-job");
    if (button) { act("retry", { jobs: [button.dataset.job] }); return; }
    const row = e.target.closest("tr[data-job]");
    if (row) focus(row.dataset.job);
  });
  $("#dag").addEventListener("click", (e) => {
    const node = e.target.closest(".node");
    if (!node) return;
    focus(node.dataset.job);
    const row = $(`#jobs tr.job[data-job="${CSS.escape(node.dataset.job)}"]`);
    if (row) row.scrollIntoView({ block: "center", behavior: "smooth" });
  });

  function render(p) {
    final = FINAL.has(p.state);
    const g = p.progress;
    $("#pipeline-state").innerHTML = badge(p.state);
    $("#retry").disabled = !final || p.state === "succeeded";
    $("#cancel").disabled = final;
    const counts = [`${g.done}/${g.total} done`];
    for (const s of ["running", "failed", "skipped", "cancelled"]) {
      if (g[s]) counts.push(`${g[s]} ${s}`);
    }
    $("#facts").innerHTML = `
      <span>Started<b>${clock(p.submitted_ms)}</b></span>
      <span>Finished<b>${final ? clock(p.finished_ms) : "–"}</b></span>
      <span>Duration<b>${duration(p.duration_ms)}</b></span>
      <span>Jobs<b>${counts.join(" · ")}</b></span>`;

    const levels = layers(p);
    const dagKey = JSON.stringify(Object.entries(p.jobs).map(([n, j]) => [n, j.state]));
    if (dagKey !== drawn) {
      drawn = dagKey;
      $("#dag").innerHTML = diagram(p, levels);
    }
    const tableKey = JSON.stringify([p.jobs, final]);
    if (tableKey !== tabled) {
      tabled = tableKey;
      $("#jobs tbody").innerHTML = jobRows(p, levels, final);
    }
    if (focused) focus(focused);
    if (job) {
      // Opened on one job (from a schedule's grid): bring its row into view once.
      const row = $(`#jobs tr.job[data-job="${CSS.escape(job)}"]`);
      if (row) row.scrollIntoView({ block: "center" });
      job = null;
    }

    const succeeded = Object.keys(p.jobs).filter((n) => p.jobs[n].state === "succeeded").join("\n");
    if (succeeded !== outputsOf) {
      outputsOf = succeeded;
      showOutputs(succeeded);
    }
  }

  async function showOutputs(names) {
    if (!names) { $("#outputs").textContent = "No job has succeeded yet."; return; }
    try {
      const outputs = await api(`/api/pipelines/${id}/outputs`);
      const entries = Object.entries(outputs);
      const shown = entries.slice(0, 50).map(([name, out]) => `<details class="outputs">
          <summary><b>${esc(name)}</b> <small>${Object.keys(out).length} key(s)</small></summary>
          <pre>${esc(JSON.stringify(out, null, 2))}</pre></details>`).join("");
      const more = entries.length > 50 ? `<p>and ${entries.length - 50} more: <code>pypelinin outputs ${esc(id)}</code></p>` : "";
      $("#outputs").innerHTML = shown + more || "No output kept.";
    } catch (error) {
      $("#outputs").textContent = error.message;
    }
  }

  return {
    async refresh(gen) {
      const p = await api(`/api/pipelines/${id}`);
      if (gen !== generation) return;
      render(p);
    },
    fail(error) {
      message(error.status === 404 ? `No pipeline ${id} on this router.` : error.message, true);
    },
    // Its summary changed (state, progress); while it runs, job counts moving anywhere may
    // be its jobs starting, which summaries do not show.
    onPipelines(d) {
      if (!final || d.changed.some((p) => p.id === id)) refresh();
    },
    onMetrics() { if (!final) refresh(); },
  };
}

// Lays the DAG out in columns: a job's column is its level (the longest path to it from
// a job without parents). An edge that spans several columns gets a waypoint in each
// column it crosses, so that it is placed (and drawn) between the jobs, not through
// them. In each column, items are ordered by the mean position of their predecessors.
function layers(p) {
  const names = Object.keys(p.jobs).sort();
  const parents = {};
  const children = {};
  const pending = {};
  for (const n of names) children[n] = [];
  for (const n of names) {
    parents[n] = [...new Set((p.jobs[n].after || []).filter((a) => a in p.jobs))];
    pending[n] = parents[n].length;
    for (const a of parents[n]) children[a].push(n);
  }
  const level = {};
  const order = names.filter((n) => pending[n] === 0);
  for (const n of order) level[n] = 0;
  for (let i = 0; i < order.length; i += 1) {
    for (const c of children[order[i]]) {
      level[c] = Math.max(level[c] || 0, level[order[i]] + 1);
      pending[c] -= 1;
      if (pending[c] === 0) order.push(c);
    }
  }
  const columns = [];
  const put = (item, k) => (columns[k] = columns[k] || []).push(item);
  const edges = [];
  const waypoint = (a, n, k) => `w:${a}\u0000${n}\u0000${k}`;
  for (const n of order) {
    const ups = [];
    for (const a of parents[n]) {
      const via = [];
      for (let k = level[a] + 1; k < level[n]; k += 1) {
        const key = waypoint(a, n, k);
        put({ key, ups: [k === level[a] + 1 ? `j:${a}` : waypoint(a, n, k - 1)] }, k);
        via.push(key);
      }
      ups.push(via.length ? via[via.length - 1] : `j:${a}`);
      edges.push({ from: `j:${a}`, to: `j:${n}`, via });
    }
    put({ key: `j:${n}`, job: n, ups }, level[n]);
  }
  const position = {};
  columns.forEach((column, k) => {
    if (k > 0) {
      const mean = (item) => item.ups.reduce((s, u) => s + position[u], 0) / (item.ups.length || 1);
      column.sort((a, b) => mean(a) - mean(b) || (a.job ? 0 : 1) - (b.job ? 0 : 1));
    }
    column.forEach((item, i) => { position[item.key] = i - (column.length - 1) / 2; });
  });
  return { columns, edges, order };
}

function diagram(p, { columns, edges }) {
  const total = Object.keys(p.jobs).length;
  if (total > MAX_DRAWN_JOBS) {
    return `<p class="muted">${total} jobs: too many to draw here; the table below lists them.</p>`;
  }
  const W = 172, H = 56, GAP_X = 64, GAP_Y = 14, PAD = 12;
  const tallest = Math.max(...columns.map((c) => c.length));
  const width = PAD * 2 + columns.length * W + (columns.length - 1) * GAP_X;
  const height = PAD * 2 + tallest * H + (tallest - 1) * GAP_Y;
  const at = {};
  columns.forEach((column, k) => {
    const top = PAD + ((tallest - column.length) * (H + GAP_Y)) / 2;
    column.forEach((item, i) => { at[item.key] = { x: PAD + k * (W + GAP_X), y: top + i * (H + GAP_Y) }; });
  });
  const curve = (x1, y1, x2, y2) => {
    const bend = Math.max(20, (x2 - x1) / 2);
    return `C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`;
  };
  const paths = edges.map(({ from, to, via }) => {
    const a = at[from], b = at[to];
    let x = a.x + W, y = a.y + H / 2;
    let d = `M${x},${y}`;
    for (const key of via) {
      const w = at[key], wy = w.y + H / 2;
      d += ` ${curve(x, y, w.x, wy)} L${w.x + W},${wy}`;
      x = w.x + W;
      y = wy;
    }
    d += ` ${curve(x, y, b.x - 2, b.y + H / 2)}`;
    return `<path class="edge" marker-end="url(#arrow)" d="${d}"/>`;
  });
  const nodes = columns.flat().filter((item) => item.job).map(({ key, job: name }) => {
    const { x, y } = at[key];
    const j = p.jobs[name];
    const why = whyText(j);
    const tip = `${name} (${j.worker}): ${j.state}${why ? " — " + why : ""}\n${settingsText(j, true)}`;
    const ruled = j.trigger_rule && j.trigger_rule !== "all_success";
    return `<g class="node ${esc(j.state)}${ruled ? " ruled" : ""}" data-job="${esc(name)}" transform="translate(${x},${y})">
      <title>${esc(tip)}</title>
      <rect width="${W}" height="${H}" rx="8" fill="${COLORS[j.state] || "#fff"}"/>
      <text x="10" y="17" font-weight="600">${esc(truncate(name, 22))}</text>
      <text class="sub" x="10" y="32">${esc(truncate(`${j.worker} · ${j.state}`, 26))}</text>
      <text class="rule" x="10" y="47">${esc(truncate(settingsText(j, false), 30))}</text>
    </g>`;
  });
  return `<svg id="dag-svg" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}"
      viewBox="0 0 ${width} ${height}" role="img" aria-label="pipeline diagram">
    <defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7"
      orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#94a3b8"/></marker></defs>
    ${paths.join("")}${nodes.join("")}
  </svg>`;
}

function jobRows(p, { order }, final) {
  const rows = [];
  const names = order.length === Object.keys(p.jobs).length ? order : Object.keys(p.jobs).sort();
  for (const name of names) {
    const j = p.jobs[name];
    const history = j.history || [];
    const last = history[history.length - 1];
    const took = j.state === "running" && j.started_ms
      ? Math.max(0, p.now_ms - j.started_ms)
      : j.duration_ms;
    const retry = final
      ? `<button class="small retry-job" data-job="${esc(name)}"
           title="run ${esc(name)} and the jobs after it again">Retry</button>`
      : "";
    rows.push(`<tr class="job" data-job="${esc(name)}">
      <td><b>${esc(name)}</b><br><small class="muted">${esc(settingsText(j, false))}</small></td>
      <td>${esc(j.worker)}</td>
      <td>${badge(j.state)}${j.late
        ? ' <span class="badge s-late" title="ran past its warn_after_ms (not stopped)">late</span>'
        : ""}</td>
      <td class="mono">${last ? esc(last.broker) : "–"}</td>
      <td>${clock(j.started_ms)}</td>
      <td class="num">${duration(took)}</td>
      <td class="num">${j.attempts}</td>
      <td class="err">${esc(whyText(j))}</td>
      <td>${retry}</td>
    </tr>`);
    if (history.length > 1) {
      for (const a of history) {
        const end = a.finished_ms ? duration(a.finished_ms - a.started_ms) : "running";
        const outcome = a.error
          ? `<span class="err">${esc(a.error)}</span>`
          : a.finished_ms ? "ok" : "";
        rows.push(`<tr class="attempt" data-job="${esc(name)}"><td></td>
          <td colspan="8">attempt ${a.number} on <span class="mono">${esc(a.broker)}</span>
          · ${clock(a.started_ms)} · ${end}${outcome ? " · " + outcome : ""}</td></tr>`);
      }
    }
  }
  return rows.join("");
}

// ---------------------------------------------------------------------------------
// #/notifications — webhooks and e-mails the router sent or still owes
// ---------------------------------------------------------------------------------

const DELIVERY_BADGE = { pending: "s-queued", delivered: "s-succeeded", failed: "s-failed" };

function notificationsView() {
  view.innerHTML = `<section>
    <div class="toolbar"><h1>Notifications</h1></div>
    <table id="notifications" class="grid">
      <thead><tr><th>Time</th><th>Event</th><th>Pipeline</th><th>Job</th><th>Channel</th>
        <th>Delivery</th><th class="num">Tries</th><th>Last error</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>`;
  return {
    async refresh(gen) {
      const list = await api("/api/notifications");
      if (gen !== generation) return;
      $("#notifications tbody").innerHTML = list.map((n) => `<tr>
          <td>${clock(n.created_ms)}</td>
          <td>${esc(n.event)}</td>
          <td><a class="mono" href="#/pipeline/${esc(n.pipeline)}">${esc(n.pipeline)}</a></td>
          <td>${esc(n.job || "–")}</td>
          <td class="mono">${esc(n.channel)}</td>
          <td><span class="badge ${DELIVERY_BADGE[n.delivery] || ""}">${esc(n.delivery)}</span></td>
          <td class="num">${n.attempts}</td>
          <td class="err">${esc(n.last_error || "")}</td>
        </tr>`).join("")
        || `<tr><td colspan="8" class="empty">No notification yet.</td></tr>`;
    },
    fail(error) {
      $("#notifications tbody").innerHTML = `<tr><td colspan="8" class="error">${esc(error.message)}</td></tr>`;
    },
    // Deliveries change without an event of their own: read again with each metrics push.
    onMetrics() { refresh(); },
  };
}

// ---------------------------------------------------------------------------------
// #/brokers — brokers, cluster metrics and throughput
// ---------------------------------------------------------------------------------

function brokersView() {
  view.innerHTML = `<section>
    <div class="toolbar"><h1>Brokers</h1></div>
    <div id="metric-cards" class="cards"></div>
    <h2>Throughput <small>job attempts finished per second, last 5 minutes</small></h2>
    <div class="card" id="chart-card"><svg id="throughput" class="chart" height="180"></svg></div>
    <h2>Brokers <small>slots, heartbeats and each host's last monitoring report</small></h2>
    <table id="brokers" class="grid">
      <thead><tr><th>Broker</th><th>Host</th><th>Slots</th><th>Heartbeat</th><th>CPU</th>
        <th>Memory</th><th class="num">Load</th><th>State</th><th>Workers</th></tr></thead>
      <tbody></tbody>
    </table>
    <h2>Pools <small>cluster-wide slot limits: slots in use, capacity, jobs waiting</small></h2>
    <table id="pools" class="grid">
      <thead><tr><th>Pool</th><th>Slots in use</th><th class="num">Queued</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>`;

  // Pools are not pushed: they are read again whenever the metrics move.
  const refreshPools = async () => {
    try { poolsTable(await api("/api/pools")); } catch (_) { /* the live indicator tells */ }
  };
  return {
    async refresh(gen) {
      const [brokers, m, pools] = await Promise.all([
        api("/api/brokers"), api("/api/metrics"), api("/api/pools"),
      ]);
      if (gen !== generation) return;
      cards(m);
      chart(m);
      brokersTable(brokers);
      poolsTable(pools);
    },
    fail(error) {
      $("#brokers tbody").innerHTML = `<tr><td colspan="9" class="error">${esc(error.message)}</td></tr>`;
    },
    // Pushed data is drawn as is: no request (but for pools).
    onMetrics(m) { cards(m); chart(m); refreshPools(); },
    onBrokers(brokers) { brokersTable(brokers); },
  };
}

function poolsTable(pools) {
  $("#pools tbody").innerHTML = pools.map((p) => {
    const used = p.capacity ? Math.min(1, p.used / p.capacity) : 0;
    return `<tr data-pool="${esc(p.name)}">
      <td><b>${esc(p.name)}</b></td>
      <td class="meter">${bar(used, load(used))} <small>${p.used}/${p.capacity}</small></td>
      <td class="num">${p.queued}</td>
    </tr>`;
  }).join("") || `<tr><td colspan="3" class="empty">No pool is set (pypelinin pool set NAME SLOTS).</td></tr>`;
}

function brokersTable(brokers) {
  $("#brokers tbody").innerHTML = brokers.map(brokerRow).join("")
    || `<tr><td colspan="9" class="empty">No broker has joined this router.</td></tr>`;
}

function brokerRow(b) {
  const m = b.monitor;
  const slots = b.slots ? b.busy / b.slots : 0;
  const cpu = m ? `${bar(m.cpu_percent / 100, load(m.cpu_percent / 100))} <small>${m.cpu_percent.toFixed(0)}%</small>` : "–";
  const used = m && m.memory_total_bytes ? m.memory_used_bytes / m.memory_total_bytes : 0;
  const memory = m
    ? `${bar(used, load(used))} <small>${bytes(m.memory_used_bytes)} / ${bytes(m.memory_total_bytes)}</small>`
    : "–";
  const stale = b.last_seen_ms_ago > 1500 ? ' class="error"' : "";
  return `<tr>
    <td class="mono">${esc(b.name)}</td>
    <td>${esc(b.host)}</td>
    <td class="meter">${bar(slots, load(slots))} <small>${b.busy}/${b.slots}</small></td>
    <td${stale}>${duration(b.last_seen_ms_ago)} ago</td>
    <td class="meter">${cpu}</td>
    <td class="meter">${memory}</td>
    <td class="num">${m ? m.load[0].toFixed(2) : "–"}</td>
    <td>${b.draining ? badge("draining").replace("s-draining", "s-skipped") : "serving"}</td>
    <td class="workers"><small>${esc(b.workers.join(", "))}</small></td>
  </tr>`;
}

function cards(m) {
  const p = m.pipelines || {};
  const j = m.jobs || {};
  const now = Math.floor(m.now_ms / 1000);
  const lastMinute = (m.throughput || [])
    .filter(([s]) => s > now - 60)
    .reduce((sum, [, n]) => sum + n, 0);
  const items = [
    [p.running || 0, "pipelines running"],
    [p.succeeded || 0, "pipelines succeeded"],
    [p.failed || 0, "pipelines failed"],
    [j.running || 0, "jobs running"],
    [m.queue_depth, "jobs waiting (queue)"],
    [m.brokers, "brokers alive"],
    [m.pipeliners, "pipeliners alive"],
    [(lastMinute / 60).toFixed(2), "jobs/s, last minute"],
    [m.attempts_finished, "attempts finished"],
  ];
  $("#metric-cards").innerHTML = items.map(([value, label]) =>
    `<div class="metric"><div class="value">${esc(value)}</div><div class="label">${esc(label)}</div></div>`,
  ).join("");
}

function chart(m) {
  const svg = $("#throughput");
  const width = Math.max(480, $("#chart-card").clientWidth - 34);
  const height = 180;
  const left = 40, right = 10, top = 12, bottom = 24;
  const span = 300;
  const now = Math.floor(m.now_ms / 1000);
  const counts = new Array(span).fill(0);
  for (const [second, n] of m.throughput || []) {
    const k = second - (now - span + 1);
    if (k >= 0 && k < span) counts[k] = n;
  }
  const peak = Math.max(1, ...counts);
  const step = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
    .find((s) => peak / s <= 4) || Math.ceil(peak / 4);
  const max = Math.ceil(peak / step) * step;
  const x = (k) => left + (k / (span - 1)) * (width - left - right);
  const y = (n) => top + (1 - n / max) * (height - top - bottom);
  const parts = [];
  for (let v = 0; v <= max; v += step) {
    parts.push(`<line class="grid-line" x1="${left}" x2="${width - right}" y1="${y(v)}" y2="${y(v)}"/>`);
    parts.push(`<text x="${left - 6}" y="${y(v) + 4}" text-anchor="end">${v}</text>`);
  }
  for (let minute = 5; minute >= 0; minute -= 1) {
    const k = span - 1 - minute * 60;
    const label = minute ? `-${minute}m` : "now";
    parts.push(`<text x="${x(Math.max(0, k))}" y="${height - 6}" text-anchor="middle">${label}</text>`);
  }
  const points = counts.map((n, k) => `${x(k).toFixed(1)},${y(n).toFixed(1)}`);
  parts.push(`<polygon class="area" points="${x(0)},${y(0)} ${points.join(" ")} ${x(span - 1)},${y(0)}"/>`);
  parts.push(`<polyline class="line" points="${points.join(" ")}"/>`);
  parts.push(`<line class="axis" x1="${left}" x2="${width - right}" y1="${y(0)}" y2="${y(0)}"/>`);
  svg.setAttribute("width", width);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.innerHTML = parts.join("");
}

// The token form, when the dashboard needs one and this browser has no session: on
// success the page loads again, with its data and its event stream.
function showSignIn() {
  if ($("#signin")) return;
  current = { refresh() {}, fail() {} };
  setLive(false, "signed out");
  $("#view").innerHTML = `<section class="signin">
    <h1>Sign in</h1>
    <p class="muted">This dashboard needs its token (the router's --http-token).</p>
    <form id="signin">
      <input id="token" type="password" autocomplete="current-password" placeholder="token" required>
      <button type="submit">Sign in</button>
    </form>
    <p id="signin-error" class="message error" hidden></p>
  </section>`;
  $("#signin").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await api("/api/session", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token: $("#token").value }),
      });
      location.reload();
    } catch (error) {
      const el = $("#signin-error");
      el.hidden = false;
      el.textContent = error.status === 401 ? "Wrong token." : error.message;
    }
  });
}

(async () => {
  let session = { required: false, signed_in: true };
  try { session = await api("/api/session"); } catch (_) { /* an older router: no token */ }
  if (session.required && !session.signed_in) {
    showSignIn();
    return;
  }
  route();
  connect();
})();
