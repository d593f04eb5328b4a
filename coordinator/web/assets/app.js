// flotilla dashboard: a few pages drawn from the JSON REST API under
// /api/v1, refreshed every two seconds, and the live event feed from
// /api/v1/events (server-sent events). No framework, no build step.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const main = $("#main");
const feed = []; // newest first, bounded
let timer = null;

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v);
  }
  for (const c of children.flat()) el.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return el;
}

async function api(path, opts = {}) {
  const res = await fetch("/api/v1" + path, opts);
  const body = await res.json();
  if (!res.ok) throw new Error(body.error ? `${body.error.name}: ${body.error.message}` : res.statusText);
  return body;
}

const post = (path, body = {}) =>
  api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

function bytes(n) {
  if (n == null) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function duration(d) {
  // subjects.Duration is JSON "1.5s"-style text or a number of nanoseconds.
  const s = typeof d === "string" ? parseGo(d) : (d || 0) / 1e9;
  if (s < 0.01) return (s * 1000).toFixed(2) + " ms";
  if (s < 1) return (s * 1000).toFixed(0) + " ms";
  if (s < 120) return s.toFixed(2) + " s";
  return (s / 60).toFixed(1) + " min";
}
function parseGo(str) {
  let total = 0;
  for (const [, v, u] of str.matchAll(/([\d.]+)(ns|us|µs|ms|s|m|h)/g))
    total += parseFloat(v) * { ns: 1e-9, us: 1e-6, "µs": 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600 }[u];
  return total;
}
const seconds = (d) => (typeof d === "string" ? parseGo(d) : (d || 0) / 1e9);
function age(t) {
  if (!t) return "never";
  const s = (Date.now() - new Date(t).getTime()) / 1000;
  if (s < 60) return Math.max(0, s).toFixed(0) + " s ago";
  if (s < 3600) return (s / 60).toFixed(0) + " min ago";
  return (s / 3600).toFixed(1) + " h ago";
}
const rate = (r) => (r || 0).toFixed(1);
const cls = (prefix, v) => ({ class: `${prefix}-${v}` });

// ---- pages ----

async function overview() {
  const o = await api("/overview");
  const free = o.workers.reduce((a, w) => a + w.free_slots, 0), total = o.workers.reduce((a, w) => a + w.slots, 0);
  return [
    h("section", {},
      h("h2", {}, `Fleet: ${o.workers.length} workers, ${total} slots, ${free} free`),
      h("table", { id: "workers" },
        h("thead", {}, h("tr", {}, h("th", {}, "Worker"), h("th", {}, "Host"), h("th", { class: "num" }, "Slots"),
          h("th", { class: "num" }, "Free"), h("th", {}, "Last heartbeat"), h("th", {}, "Instance"))),
        h("tbody", {}, o.workers.map((w) => h("tr", {}, h("td", {}, w.worker), h("td", {}, w.host),
          h("td", { class: "num" }, w.slots), h("td", { class: "num" }, w.free_slots),
          h("td", {}, age(w.last_heartbeat)), h("td", { class: "muted" }, w.instance)))))),
    h("section", {},
      h("h2", {}, `Jobs: ${o.jobs.length}`),
      h("table", { id: "jobs" },
        h("thead", {}, h("tr", {}, h("th", {}, "Job"), h("th", {}, "State"), h("th", { class: "num" }, "Parallelism"),
          h("th", { class: "num" }, "Restarts"), h("th", { class: "num" }, "Events/s"), h("th", { class: "num" }, "Lag"),
          h("th", {}, "Last checkpoint"))),
        h("tbody", {}, o.jobs.map((j) => h("tr", { class: "clickable", "data-job": j.job, onclick: () => (location.hash = "#/job/" + j.job) },
          h("td", {}, h("a", { href: "#/job/" + j.job }, j.job)), h("td", cls("state", j.state), j.state),
          h("td", { class: "num" }, (j.tasks || []).length), h("td", { class: "num" }, j.restarts || 0),
          h("td", { class: "num" }, rate(j.rate)), h("td", { class: "num" }, j.lag || 0),
          h("td", {}, j.latest_checkpoint ? `#${j.latest_checkpoint}, ${age(j.last_checkpoint_at)}` : "none")))))),
  ];
}

let selected = null; // the history row whose per-task detail is shown

async function jobPage(name) {
  const [job, hist, sps] = await Promise.all([
    api("/jobs/" + name), api("/jobs/" + name + "/history?limit=200"), api("/jobs/" + name + "/savepoints")]);
  const attempts = hist.attempts || [];
  return [
    h("section", {},
      h("h2", {}, "Job ", job.job, " ", h("span", cls("state", job.state), job.state)),
      h("div", { class: "kv" },
        kv("Parallelism", (job.tasks || []).length), kv("Max parallelism", job.spec?.max_parallelism),
        kv("Operator", job.spec?.operator?.type), kv("Input stream", job.spec?.source?.stream),
        kv("Events/s", rate(job.rate)), kv("Lag (messages)", job.lag || 0), kv("Restarts", job.restarts || 0),
        kv("Last checkpoint", job.latest_checkpoint ? `#${job.latest_checkpoint}, ${age(job.last_checkpoint_at)}` : "none")),
      actions(job)),
    h("section", {},
      h("h2", {}, "Tasks"),
      h("table", { id: "tasks" },
        h("thead", {}, h("tr", {}, ["Task", "Worker", "Key groups", "State", "Attempt"].map((t) => h("th", {}, t)),
          ["Events/s", "Lag", "Events in", "Outputs", "Skipped", "State size"].map((t) => h("th", { class: "num" }, t)))),
        h("tbody", {}, (job.tasks || []).map((t) => {
          const s = t.stats || {};
          return h("tr", {}, h("td", {}, t.task), h("td", {}, t.worker), h("td", {}, `${t.range.start}-${t.range.end}`),
            h("td", cls("state", t.state), t.state), h("td", { class: "muted" }, t.attempt),
            h("td", { class: "num" }, rate(s.rate)), h("td", { class: "num" }, s.lag ?? ""), h("td", { class: "num" }, s.events_in ?? ""),
            h("td", { class: "num" }, s.outputs ?? ""), h("td", { class: "num" }, t.skipped || 0), h("td", { class: "num" }, bytes(s.state_bytes)));
        })))),
    checkpointOverview(attempts),
    h("section", {},
      h("h2", {}, "Checkpoint duration and size over time"),
      h("div", { class: "charts" },
        chart("chart-duration", "duration", attempts, (a) => seconds(a.duration), (v) => duration(v * 1e9)),
        chart("chart-size", "size", attempts, (a) => a.size, bytes))),
    historyTable(attempts, hist.truncated),
    h("section", {},
      h("h2", {}, "Savepoints"),
      h("table", { id: "savepoints" },
        h("thead", {}, h("tr", {}, h("th", {}, "ID"), h("th", {}, "Completed"), h("th", {}, "Format"),
          h("th", { class: "num" }, "Size"), h("th", { class: "num" }, "Tasks"), h("th", {}, "Location"))),
        h("tbody", {}, sps.map((s) => h("tr", { "data-id": s.id }, h("td", {}, s.id), h("td", {}, new Date(s.completed).toLocaleString()),
          h("td", {}, s.format), h("td", { class: "num" }, bytes(s.size)), h("td", { class: "num" }, s.tasks.length),
          h("td", { class: "muted" }, s.location)))))),
  ];
}

const kv = (k, v) => h("div", {}, h("span", {}, k), v ?? "");

let lastAction = { job: "", cls: "muted", text: "" }; // survives the page's refreshes

function actions(job) {
  const running = job.state === "running";
  const shown = lastAction.job === job.job ? lastAction : { cls: "muted", text: "" };
  const out = h("span", { id: "action-result", class: shown.cls }, shown.text);
  const say = (cls, text) => { lastAction = { job: job.job, cls, text }; out.className = cls; out.textContent = text; };
  const par = h("input", { type: "number", min: 1, max: job.spec?.max_parallelism, value: (job.tasks || []).length, id: "rescale-to" });
  const act = (what, body, confirmText) => async (ev) => {
    if (confirmText && !confirm(confirmText)) return;
    const btn = ev.target;
    btn.disabled = true;
    say("muted", what + "…");
    try {
      const r = await post(`/jobs/${job.job}/${what}`, body ? body() : {});
      say("muted", r.location ? `${what} done: savepoint ${r.checkpoint} at ${r.location}` : `${what} done`);
    } catch (e) {
      say("error", `${what} failed: ${e.message}`);
    } finally {
      btn.disabled = false;
      refresh();
    }
  };
  return h("div", { class: "actions" },
    h("button", { id: "act-savepoint", disabled: !running, onclick: act("savepoint") }, "Trigger savepoint"),
    h("button", { id: "act-stop", disabled: !running, onclick: act("stop", null, `Stop ${job.job} with a savepoint?`) }, "Stop with savepoint"),
    h("span", {}, "Rescale to ", par, " ",
      h("button", { id: "act-rescale", disabled: !running, onclick: act("rescale", () => ({ parallelism: +par.value }), `Rescale ${job.job} through a savepoint?`) }, "Rescale")),
    h("button", { id: "act-cancel", class: "danger", disabled: job.state === "canceled" || job.state === "finished" || job.state === "failed",
      onclick: act("cancel", null, `Cancel ${job.job}? Its state is kept only in its checkpoints and savepoints.`) }, "Cancel"),
    out);
}

function checkpointOverview(attempts) {
  const count = (o, k) => attempts.filter((a) => a.outcome === o && (!k || a.kind === k)).length;
  const done = attempts.filter((a) => a.outcome === "completed");
  const last = done[done.length - 1];
  const lastFail = [...attempts].reverse().find((a) => a.outcome !== "completed");
  return h("section", { id: "checkpoint-overview" },
    h("h2", {}, "Checkpoints"),
    h("div", { class: "kv" },
      kv("Completed", `${count("completed", "checkpoint")} checkpoints, ${count("completed", "savepoint")} savepoints`),
      kv("Failed", count("failed")), kv("Aborted", count("aborted")),
      kv("Latest completed", last ? `#${last.id} (${last.kind}), ${age(last.ended)}` : "none"),
      kv("Its duration", last ? duration(last.duration) : ""), kv("Its size / uploaded", last ? `${bytes(last.size)} / ${bytes(last.uploaded)}` : ""),
      kv("Latest failure", lastFail ? `#${lastFail.id}: ${lastFail.failure?.message || lastFail.outcome}` : "none")));
}

// chart draws value(a) of each attempt against its trigger time as SVG:
// a line through completed checkpoints, a dot per attempt (savepoints
// included) coloured by outcome.
function chart(id, what, attempts, value, fmt) {
  const W = 600, H = 180, L = 60, R = 10, T = 10, B = 24;
  const svgNS = "http://www.w3.org/2000/svg";
  const s = (tag, attrs, text) => {
    const el = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  };
  const svg = s("svg", { id, class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": `checkpoint ${what}` });
  const pts = attempts.map((a) => ({ a, t: new Date(a.triggered).getTime(), v: value(a) || 0 }));
  if (!pts.length) {
    svg.append(s("text", { x: W / 2 - 40, y: H / 2 }, "no checkpoints yet"));
    return svg;
  }
  const t0 = Math.min(...pts.map((p) => p.t)), t1 = Math.max(...pts.map((p) => p.t));
  const vmax = Math.max(...pts.map((p) => p.v)) || 1;
  const x = (t) => L + (t1 === t0 ? (W - L - R) / 2 : ((t - t0) / (t1 - t0)) * (W - L - R));
  const y = (v) => H - B - (v / vmax) * (H - T - B);
  svg.append(s("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#ccd" }), s("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#ccd" }),
    s("text", { x: 2, y: T + 8 }, fmt(vmax)), s("text", { x: 2, y: H - B }, fmt(0)),
    s("text", { x: L, y: H - 6 }, new Date(t0).toLocaleTimeString()), s("text", { x: W - R - 60, y: H - 6 }, new Date(t1).toLocaleTimeString()));
  const done = pts.filter((p) => p.a.outcome === "completed" && p.a.kind === "checkpoint");
  if (done.length > 1) svg.append(s("polyline", { points: done.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ") }));
  for (const p of pts) {
    const c = s("circle", { cx: x(p.t).toFixed(1), cy: y(p.v).toFixed(1), r: 3.5, class: p.a.outcome, "data-id": p.a.id, "data-kind": p.a.kind });
    c.append(s("title", {}, `${p.a.kind} ${p.a.id} ${p.a.outcome}: ${fmt(p.v)}`));
    svg.append(c);
  }
  return svg;
}

function historyTable(attempts, truncated) {
  const rows = [];
  for (const a of [...attempts].reverse()) {
    const acked = a.tasks.filter((t) => t.acked).length;
    rows.push(h("tr", { class: "clickable" + (selected === a.id ? " selected" : ""), "data-id": a.id, "data-kind": a.kind, "data-outcome": a.outcome,
      onclick: () => { selected = selected === a.id ? null : a.id; refresh(); } },
      h("td", {}, a.id), h("td", {}, a.kind), h("td", {}, a.trigger), h("td", cls("outcome", a.outcome), a.outcome),
      h("td", {}, new Date(a.triggered).toLocaleTimeString()), h("td", { class: "num" }, duration(a.duration)),
      h("td", { class: "num" }, bytes(a.size)), h("td", { class: "num" }, bytes(a.uploaded)), h("td", { class: "num" }, `${acked}/${a.tasks.length}`),
      h("td", { class: a.failure ? "error" : "muted" }, a.failure ? a.failure.message : a.location || "")));
    if (selected === a.id) {
      rows.push(h("tr", { class: "detail" }, h("td", { colspan: 10 },
        h("table", { class: "task-detail" },
          h("thead", {}, h("tr", {}, ["Task", "Worker", "Acked"].map((t) => h("th", {}, t)),
            ["Sync pause", "Upload", "Size", "Uploaded"].map((t) => h("th", { class: "num" }, t)))),
          h("tbody", {}, a.tasks.map((t) => h("tr", {}, h("td", {}, t.task), h("td", {}, t.worker), h("td", {}, t.acked ? "yes" : "no"),
            h("td", { class: "num" }, t.acked ? duration(t.sync) : ""), h("td", { class: "num" }, t.acked ? duration(t.async) : ""),
            h("td", { class: "num" }, t.acked ? bytes(t.size) : ""), h("td", { class: "num" }, t.acked ? bytes(t.uploaded) : ""))))))));
    }
  }
  return h("section", {},
    h("h2", {}, "Checkpoint history ", h("span", { class: "muted" }, truncated ? "(newest 200; older ones kept in JetStream)" : "(click a row for per-task detail)")),
    h("table", { id: "history" },
      h("thead", {}, h("tr", {}, ["ID", "Kind", "Trigger", "Outcome", "Triggered"].map((t) => h("th", {}, t)),
        ["Duration", "Size", "Uploaded", "Acked"].map((t) => h("th", { class: "num" }, t)), h("th", {}, "Failure / location"))),
      h("tbody", {}, rows)));
}

function eventsPage() {
  return [h("section", {}, h("h2", {}, "Live events ", h("span", { class: "muted" }, "(flotilla.events.>, newest first)")),
    h("ul", { id: "feed" }, feed.map(eventLine)))];
}

function eventLine(ev) {
  const what = [ev.kind, ev.job, ev.worker, ev.checkpoint ? "#" + ev.checkpoint : "", ev.state, ev.location, ev.message,
    ev.error ? "error: " + ev.error.message : ""].filter(Boolean).join("  ");
  return h("li", { class: ev.error ? "error" : "" }, new Date(ev.time).toLocaleTimeString(), "  ", what);
}

// ---- routing and refresh ----

async function refresh() {
  clearTimeout(timer);
  const route = location.hash.replace(/^#\/?/, "");
  try {
    let content;
    if (route.startsWith("job/")) content = await jobPage(decodeURIComponent(route.slice(4)));
    else if (route === "events") content = eventsPage();
    else content = await overview();
    main.replaceChildren(...content);
    $("#status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("#status").textContent = "error: " + e.message;
  }
  timer = setTimeout(refresh, 2000);
}

window.addEventListener("hashchange", () => { selected = null; refresh(); });

const source = new EventSource("/api/v1/events");
source.onmessage = (m) => {
  feed.unshift(JSON.parse(m.data));
  feed.length = Math.min(feed.length, 500);
  if (location.hash === "#/events") $("#feed")?.prepend(eventLine(feed[0]));
};

refresh();
