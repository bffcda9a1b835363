// mrkit dashboard: the live jobs list and job page. No framework, nothing loaded from elsewhere.
// Every value from the server goes into the page with textContent (never innerHTML), so keys,
// error messages and log lines that user code produced are shown as text, never run as markup.
"use strict";

const MAX_ROWS = 500; // task rows drawn at once; filter or sort to see others (keeps 10k-task jobs fast)
// One collator for every comparison: localeCompare with options builds one per call (10k rows: 1.7 s).
const collate = new Intl.Collator(undefined, { numeric: true }).compare;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function ago(t) {
  if (!t) return "";
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 60 ? `${s.toFixed(1)} s ago` : `${(s / 60).toFixed(1)} min ago`;
}

function when(t) {
  return t ? new Date(t * 1000).toLocaleString() : "";
}

function live(url, onData) {
  const badge = document.getElementById("live");
  const source = new EventSource(url);
  source.onopen = () => { badge.textContent = "live"; badge.className = "live on"; };
  source.onerror = () => { badge.textContent = "reconnecting…"; badge.className = "live off"; };
  source.onmessage = (msg) => {
    const data = JSON.parse(msg.data);
    onData(data);
    const state = data.status && data.status.state;
    if (state && state !== "running") {
      source.close();
      badge.textContent = "ended";
      badge.className = "live ended";
    }
  };
  return source;
}

// ---- the jobs list -------------------------------------------------------------------------

function drawSources(data) {
  const box = document.getElementById("sources");
  box.replaceChildren();
  for (const src of data.sources) {
    const section = el("section");
    section.append(el("h2", src.label));
    if (src.error) section.append(el("p", src.error, "error"));
    if (!src.jobs.length && !src.error) section.append(el("p", "no jobs yet", "muted"));
    if (src.jobs.length) {
      const table = el("table", null, "grid jobs");
      const head = el("tr");
      for (const h of ["job", "name", "state", "phase", "map", "reduce", "submitted", "seconds", "error"]) {
        head.append(el("th", h));
      }
      const thead = el("thead");
      thead.append(head);
      table.append(thead);
      const body = el("tbody");
      for (const job of src.jobs) {
        const row = el("tr");
        const link = el("a", job.id);
        link.href = `/jobs/${encodeURIComponent(src.source)}/${encodeURIComponent(job.id)}`;
        const first = el("td");
        first.append(link);
        row.append(first, el("td", job.name), el("td", job.state, `state ${job.state}`), el("td", job.phase),
          el("td", `${job.tasks.map.done}/${job.tasks.map.total}`),
          el("td", `${job.tasks.reduce.done}/${job.tasks.reduce.total}`),
          el("td", when(job.submitted)), el("td", job.seconds == null ? "" : job.seconds.toFixed(1)),
          el("td", job.error, "error-cell"));
        body.append(row);
      }
      table.append(body);
      section.append(table);
    }
    box.append(section);
  }
}

// ---- one job -------------------------------------------------------------------------------

const view = { tasks: [], sortKey: "task", sortUp: true, attempts: -1, timelineAt: 0 };

function drawJob(data) {
  if (data.error) {
    const error = document.getElementById("error");
    error.textContent = data.error;
    error.hidden = false;
    return;
  }
  const st = data.status;
  document.getElementById("job-name").textContent = st.name || st.id;
  const state = document.getElementById("state");
  state.textContent = st.state + (st.state === "running" && st.phase ? ` (${st.phase})` : "");
  state.className = `state ${st.state}`;
  const parts = [`${st.id} on ${st.executor || "?"}`];
  if (st.submitted) parts.push(`submitted ${when(st.submitted)}`);
  if (st.seconds != null) parts.push(`${st.seconds.toFixed(1)} s`);
  if (st.output) parts.push(`output ${st.output}`);
  if (st.cost) parts.push(`estimated cost $${Number(st.cost.price || 0).toFixed(6)}`);
  document.getElementById("summary").textContent = parts.join(" · ");
  const error = document.getElementById("error");
  error.hidden = !st.error;
  error.textContent = st.error ? st.error.split("\n")[0] : "";
  document.getElementById("cancel").hidden = st.state !== "running";
  drawPhases(data.phases);
  view.tasks = data.tasks;
  drawTasks();
  drawFailures(data.failures, data.failures_total);
  drawWorkers(data.workers);
  drawCounters(st.counters || {});
  document.getElementById("logs").textContent = data.logs.join("\n");
  // The timeline is redrawn by the server when attempts were added, at most once a second.
  const now = Date.now();
  if (view.attempts < 0) {  // the first data: the image requested with the page is as fresh
    view.attempts = data.attempts;
    view.timelineAt = now;
  } else if (data.attempts !== view.attempts && (now - view.timelineAt > 1000 || st.state !== "running")) {
    view.attempts = data.attempts;
    view.timelineAt = now;
    const img = document.getElementById("timeline");
    img.src = img.src.split("?")[0] + `?n=${data.attempts}&t=${now}`;
  }
}

function drawPhases(phases) {
  const box = document.getElementById("phases");
  box.replaceChildren();
  for (const p of phases) {
    if (!p.total && !p.attempts) continue;
    const row = el("div", null, "phase");
    const bar = el("progress");
    bar.max = Math.max(1, p.total);
    bar.value = p.done;
    bar.dataset.phase = p.name;
    row.append(el("span", p.name, "phase-name"), bar,
      el("span", `${p.done}/${p.total} tasks, ${p.attempts} attempts, ${p.failures} failed, ${p.lost} lost`));
    box.append(row);
  }
}

function drawTasks() {
  const filter = document.getElementById("task-filter").value;
  const needle = document.getElementById("task-search").value.trim().toLowerCase();
  let rows = view.tasks.filter((t) => (!filter || t.state === filter) &&
    (!needle || t.task.toLowerCase().includes(needle) || (t.worker || "").toLowerCase().includes(needle)));
  const key = view.sortKey;
  const sign = view.sortUp ? 1 : -1;
  rows.sort((a, b) => {
    const x = a[key], y = b[key];
    if (typeof x === "number" && typeof y === "number") return sign * (x - y);
    return sign * collate(String(x ?? ""), String(y ?? ""));
  });
  const total = rows.length;
  rows = rows.slice(0, MAX_ROWS);
  const body = document.querySelector("#tasks tbody");
  const fresh = el("tbody");
  for (const t of rows) {
    const tr = el("tr");
    tr.dataset.state = t.state;
    tr.append(el("td", t.phase), el("td", t.task), el("td", t.state, `state ${t.state}`),
      el("td", t.attempts, "num"), el("td", t.seconds == null ? "" : t.seconds.toFixed(3), "num"),
      el("td", t.records_in ?? "", "num"), el("td", t.records_out ?? "", "num"), el("td", t.worker),
      el("td", t.error, "error-cell"));
    fresh.append(tr);
  }
  body.replaceWith(fresh);
  document.getElementById("task-count").textContent = total > MAX_ROWS
    ? `showing ${MAX_ROWS} of ${total} tasks (filter or sort to see others)` : `${total} tasks`;
}

function drawFailures(failures, total) {
  const box = document.getElementById("failures");
  box.replaceChildren();
  if (!failures.length) { box.append(el("p", "none", "muted")); return; }
  if (total > failures.length) box.append(el("p", `the last ${failures.length} of ${total}`, "muted"));
  for (const f of failures) {
    const item = el("details", null, "failure");
    const summary = el("summary");
    summary.append(el("strong", `${f.phase} ${f.task} attempt ${f.attempt} ${f.outcome}`),
      el("span", ` on ${f.worker || "?"}: `), el("span", f.error, "sentence"));
    item.append(summary, el("pre", f.traceback || "(no traceback: the worker did not report one)", "traceback"));
    box.append(item);
  }
}

function drawWorkers(workers) {
  const body = el("tbody");
  for (const w of workers) {
    const tr = el("tr");
    tr.append(el("td", w.worker), el("td", w.attempts, "num"), el("td", w.committed, "num"),
      el("td", w.failed, "num"), el("td", ago(w.last)));
    body.append(tr);
  }
  document.querySelector("#workers tbody").replaceWith(body);
}

function drawCounters(counters) {
  const body = el("tbody");
  for (const name of Object.keys(counters).sort()) {
    const tr = el("tr");
    tr.append(el("th", name), el("td", counters[name], "num"));
    body.append(tr);
  }
  document.querySelector("#counters tbody").replaceWith(body);
}

async function cancelJob(source, job) {
  const button = document.getElementById("cancel");
  const message = document.getElementById("cancel-message");
  button.disabled = true;
  const csrf = document.querySelector('meta[name="mrkit-csrf"]').content;
  try {
    const response = await fetch(`/api/jobs/${encodeURIComponent(source)}/${encodeURIComponent(job)}/cancel`,
      { method: "POST", headers: { "X-Mrkit-Csrf": csrf }, credentials: "same-origin" });
    const body = await response.json();
    message.textContent = body.message || body.error || "";
  } catch (err) {
    message.textContent = `the cancel request failed: ${err}`;
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "jobs") {
    live("/api/stream", drawSources);
  } else if (page === "job") {
    const source = document.body.dataset.source;
    const job = document.body.dataset.job;
    document.getElementById("task-filter").addEventListener("change", drawTasks);
    document.getElementById("task-search").addEventListener("input", drawTasks);
    for (const th of document.querySelectorAll("#tasks th[data-key]")) {
      th.addEventListener("click", () => {
        view.sortUp = view.sortKey === th.dataset.key ? !view.sortUp : true;
        view.sortKey = th.dataset.key;
        drawTasks();
      });
    }
    document.getElementById("cancel").addEventListener("click", () => cancelJob(source, job));
    live(`/api/jobs/${encodeURIComponent(source)}/${encodeURIComponent(job)}/stream`, drawJob);
  } else {
    document.getElementById("live").textContent = "";
  }
});
