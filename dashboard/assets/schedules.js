// The schedule views of the dashboard, loaded before app.js (whose helpers they use when
// called): #/schedules lists the schedules with their state, next tick and last runs;
// #/schedules/NAME shows one with its settings, next ticks, the buttons (pause or
// resume, trigger, and per run a clear) and its grid: rows are logical dates, columns
// are jobs, each cell a job's state. A cell opens the pipeline page on that job.
"use strict";

const scheduleBadge = (state) => `<span class="badge s-${esc(state)}">${esc(state)}</span>`;
const scheduleHref = (name) => `#/schedules/${encodeURIComponent(name)}`;

// The latest ticks as small coloured dots, newest first: a dot per run, its note otherwise.
function lastRuns(runs) {
  return runs.map((t) => {
    const tip = `${t.logical_date}: ${t.state || t.note || "no run"}`;
    return t.pipeline
      ? `<a class="dot s-${esc(t.state)}" href="#/pipeline/${esc(t.pipeline)}" title="${esc(tip)}"></a>`
      : `<span class="dot none" title="${esc(tip)}"></span>`;
  }).join("") || `<small>none yet</small>`;
}

// ---------------------------------------------------------------------------------
// #/schedules — the schedules
// ---------------------------------------------------------------------------------

function schedulesView() {
  view.innerHTML = `<section>
    <div class="toolbar"><h1>Schedules</h1></div>
    <table id="schedules" class="grid">
      <thead><tr><th>Schedule</th><th>State</th><th>Cron</th><th>Zone</th><th>Overrun</th>
        <th class="num">Running</th><th class="num">Pending</th><th>Next tick</th><th>Last runs</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>`;
  $("#schedules tbody").addEventListener("click", (e) => {
    const row = e.target.closest("tr[data-name]");
    if (row && !e.target.closest("a")) location.hash = scheduleHref(row.dataset.name);
  });

  return {
    async refresh(gen) {
      const data = await api("/api/schedules");
      if (gen !== generation) return;
      const rows = data.schedules.map((s) => `<tr class="link" data-name="${esc(s.name)}">
        <td><a href="${esc(scheduleHref(s.name))}"><b>${esc(s.name)}</b></a></td>
        <td>${scheduleBadge(s.state)}</td>
        <td class="mono">${esc(s.cron)}</td>
        <td>${esc(s.timezone)}</td>
        <td>${esc(s.overrun)}</td>
        <td class="num">${s.running}/${s.max_running}</td>
        <td class="num">${s.pending}</td>
        <td class="mono">${s.state === "active" ? esc(s.next_tick || "–") : "–"}</td>
        <td class="dots">${lastRuns(s.last_runs)}</td>
      </tr>`).join("");
      $("#schedules tbody").innerHTML = rows
        || `<tr><td colspan="9" class="empty">No schedule yet: add one with <code>pypelinin schedule add FILE</code>.</td></tr>`;
    },
    fail(error) {
      $("#schedules tbody").innerHTML = `<tr><td colspan="9" class="error">${esc(error.message)}</td></tr>`;
    },
    // Runs starting and ending change the last runs and counts.
    onPipelines() { refresh(); },
  };
}

// ---------------------------------------------------------------------------------
// #/schedules/NAME — one schedule: settings, buttons and the grid
// ---------------------------------------------------------------------------------

function scheduleView(name) {
  const legend = JOB_STATES.map((s) => `<span style="--c:${COLORS[s]}">${s}</span>`).join("");
  const base = `/api/schedules/${encodeURIComponent(name)}`;
  view.innerHTML = `<section>
    <p class="crumbs"><a href="#/schedules">Schedules</a> / schedule</p>
    <div class="toolbar">
      <h1 id="schedule-name">${esc(name)}</h1>
      <span id="schedule-state"></span>
      <span class="spacer"></span>
      <button id="pause-resume" disabled>Pause</button>
      <button id="trigger" class="primary" disabled title="make a run now, outside the recurrence">Trigger</button>
    </div>
    <div id="message" class="message" hidden></div>
    <div id="facts" class="facts"></div>
    <p id="next-ticks" class="muted"></p>
    <h2>Runs <small>rows are logical dates, columns are jobs; click a cell for the job's attempts and log</small></h2>
    <div class="card grid-card">
      <table id="schedule-grid" class="runs"><thead></thead><tbody></tbody></table>
      <div class="legend">${legend}</div>
    </div>
  </section>`;

  let paused = false;
  let drawn = "";

  function message(text, isError = false) {
    const el = $("#message");
    el.hidden = !text;
    el.className = "message" + (isError ? " error" : "");
    el.textContent = text || "";
  }

  async function act(action, body, busy, done) {
    message(busy);
    try {
      const answer = await api(`${base}/${action}`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: body ? JSON.stringify(body) : "",
      });
      message(done(answer));
    } catch (error) {
      message(error.message, true);
    }
    refresh();
  }

  $("#pause-resume").addEventListener("click", () => {
    const action = paused ? "resume" : "pause";
    act(action, null, paused ? "Resuming…" : "Pausing…", (s) => `The schedule is ${s.state}.`);
  });
  $("#trigger").addEventListener("click", () => {
    act("trigger", null, "Triggering…", (r) => `Triggered: run ${r.pipeline}.`);
  });
  $("#schedule-grid tbody").addEventListener("click", (e) => {
    const button = e.target.closest("button.clear");
    if (!button) return;
    const pipeline = button.dataset.pipeline;
    act("clear", { pipeline }, "Clearing…", (p) => `Cleared: run ${pipeline} is ${p.state}.`);
  });

  function render(s) {
    paused = s.paused;
    $("#schedule-state").innerHTML = scheduleBadge(s.state);
    const toggle = $("#pause-resume");
    toggle.disabled = false;
    toggle.textContent = s.paused ? "Resume" : "Pause";
    toggle.title = s.paused ? "tick again from now on" : "stop ticking; runs already made go on";
    $("#trigger").disabled = false;
    $("#facts").innerHTML = `
      <span>Cron<b class="mono">${esc(s.cron)}</b></span>
      <span>Zone<b>${esc(s.timezone)}</b></span>
      <span>Overrun<b>${esc(s.overrun)}</b></span>
      <span>Running<b>${s.running}/${s.max_running}</b></span>
      <span>Pending<b>${s.pending}</b></span>
      <span>Catch-up<b>${s.catchup ? "yes" : "no"}</b></span>`;
    $("#next-ticks").innerHTML = s.paused ? "Paused: no tick until resumed."
      : s.next_ticks.length ? `Next ticks: <span class="mono">${s.next_ticks.map(esc).join(" · ")}</span>`
        : "No tick left.";
    const { columns, rows } = s.grid;
    const head = `<tr><th>Logical date</th><th>Run</th>
      ${columns.map((c) => `<th class="job-col" title="${esc(c)}">${esc(truncate(c, 14))}</th>`).join("")}<th></th></tr>`;
    const body = rows.map((r) => {
      const cells = columns.map((c) => {
        const state = r.jobs[c];
        if (!state) return `<td></td>`;
        return `<td><a class="cell" href="#/pipeline/${esc(r.pipeline)}/job/${esc(encodeURIComponent(c))}"
          data-job="${esc(c)}" data-state="${esc(state)}" style="background:${COLORS[state] || "#fff"}"
          title="${esc(`${c}: ${state} (${r.logical_date})`)}"></a></td>`;
      }).join("");
      const clear = r.state === "failed" || r.state === "cancelled"
        ? `<button class="small clear" data-pipeline="${esc(r.pipeline)}"
             title="run again the jobs of this date that did not succeed">Clear</button>` : "";
      return `<tr data-pipeline="${esc(r.pipeline)}">
        <td class="mono">${esc(r.logical_date || "–")}${r.kind === "manual" ? " <small>manual</small>" : ""}</td>
        <td>${badge(r.state)}</td>${cells}<td>${clear}</td></tr>`;
    }).join("") || `<tr><td colspan="${columns.length + 3}" class="empty">No run yet.</td></tr>`;
    // Redrawn only when it changed, so that a cell stays put under the pointer.
    if (head + body !== drawn) {
      drawn = head + body;
      $("#schedule-grid thead").innerHTML = head;
      $("#schedule-grid tbody").innerHTML = body;
    }
  }

  return {
    async refresh(gen) {
      const s = await api(base);
      if (gen !== generation) return;
      render(s);
    },
    fail(error) {
      message(error.status === 404 ? `No schedule ${name} on this router.` : error.message, true);
    },
    onPipelines() { refresh(); },
  };
}
