// The nightshift board: the runs list, a run, the automations and the workers and queue,
// kept live by server-sent events.
// Plain JS, no framework. Everything from the server is put in the page as text
// (textContent, attributes set one by one), never as HTML: run text is hostile.
"use strict";

const FINISHED = ["succeeded", "failed", "cancelled", "timed_out", "skipped"];
const STATES = ["awaiting_approval", "queued", "leased", "running"].concat(FINISHED);
const PAGE = 50;

const board = { csrf: "", access: "read", view: null };

// An element with attributes and children (strings become text nodes).
function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "onclick") node.addEventListener("click", value);
    else if (name === "onchange") node.addEventListener("change", value);
    else node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } });
  if (response.status === 401) { location.assign("/login"); throw new Error("logged out"); }
  if (!response.ok) throw new Error(url + ": " + response.status + " " + (await response.text()));
  return { body: await response.json(), headers: response.headers };
}

async function post(url, body) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json", "x-nightshift-csrf": board.csrf },
    body: JSON.stringify(body || {}),
  });
  if (!response.ok) throw new Error(response.status + " " + (await response.text()));
  return response.json().catch(() => ({}));
}

function age(time) {
  if (!time) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(time)) / 1000);
  return span(seconds) + " ago";
}

function span(seconds) {
  if (seconds < 60) return Math.round(seconds) + "s";
  if (seconds < 3600) return Math.round(seconds / 60) + "m";
  if (seconds < 86400) return (seconds / 3600).toFixed(1) + "h";
  return (seconds / 86400).toFixed(1) + "d";
}

function duration(run) {
  if (!run.started_at) return "";
  const end = run.finished_at ? Date.parse(run.finished_at) : Date.now();
  return span((end - Date.parse(run.started_at)) / 1000);
}

function source(run) {
  const first = (run.event_ids || [])[0] || "";
  return first.includes(":") ? first.split(":")[0] : "";
}

function pullRequest(run) {
  const details = (run.result && run.result.details) || {};
  const link = details.pull_request;
  const url = typeof link === "string" ? link : link && (link.url || link.html_url);
  if (!url || !/^https?:\/\//.test(url)) return null;
  return el("a", { href: url, rel: "noopener noreferrer", target: "_blank" }, "pull request");
}

function stateBadge(state) {
  return el("span", { class: "state state-" + state, "data-state": state }, state);
}

function runLink(id) {
  return el("a", { href: "/#/runs/" + id, "data-run": id }, id);
}

// ---- the runs list ----

function runsView() {
  const query = new URLSearchParams(location.hash.split("?")[1] || "");
  const view = { kind: "runs", state: query.get("state") || "", automation: query.get("automation") || "", before: query.get("before") || "", rows: new Map() };
  const stateSelect = el("select", { id: "filter-state", onchange: () => filter(stateSelect.value, automationInput.value) },
    el("option", { value: "" }, "any state"), ...STATES.map((s) => el("option", { value: s, selected: s === view.state }, s)));
  const automationInput = el("input", { id: "filter-automation", placeholder: "automation", value: view.automation });
  automationInput.addEventListener("change", () => filter(stateSelect.value, automationInput.value));
  const body = el("tbody", { id: "runs" });
  view.body = body;
  view.pager = el("div", { class: "pager" });
  const root = el("div", {},
    el("div", { class: "filters" }, "Runs", stateSelect, automationInput,
      view.before ? el("a", { href: "/#/" + filterQuery(view.state, view.automation, "") }, "newest") : null),
    el("table", {}, el("thead", {}, el("tr", {}, ...["run", "state", "automation", "source", "age", "duration", "branch", "pull request"].map((h) => el("th", {}, h)))), body),
    view.pager);
  show(root, view);
  loadRuns(view);
}

function filterQuery(state, automation, before) {
  const query = new URLSearchParams();
  if (state) query.set("state", state);
  if (automation) query.set("automation", automation);
  if (before) query.set("before", before);
  const text = query.toString();
  return text ? "?" + text : "";
}

function filter(state, automation) {
  location.hash = "#/" + filterQuery(state, automation.trim(), "");
}

async function loadRuns(view) {
  const query = new URLSearchParams({ limit: String(PAGE), view: "summary" });
  if (view.state) query.set("state", view.state);
  if (view.automation) query.set("automation", view.automation);
  if (view.before) query.set("before", view.before);
  try {
    const { body, headers } = await getJSON("/api/runs?" + query);
    if (board.view !== view) return;
    view.body.replaceChildren();
    view.rows.clear();
    for (const run of body) view.body.append(runRow(view, run));
    const next = headers.get("x-nightshift-next");
    view.pager.replaceChildren(next ? el("a", { id: "older", href: "/#/" + filterQuery(view.state, view.automation, next) }, "older runs") : "");
  } catch (error) {
    view.pager.replaceChildren(el("span", { class: "error" }, String(error.message)));
  }
}

function runRow(view, run) {
  const row = el("tr", { "data-id": run.id },
    el("td", {}, runLink(run.id)),
    el("td", { class: "state-cell" }, stateBadge(run.state)),
    el("td", {}, run.automation),
    el("td", {}, source(run)),
    el("td", { title: run.created_at }, age(run.created_at)),
    el("td", { class: "duration" }, duration(run)),
    el("td", { class: "branch", title: (run.task && run.task.branch) || "" }, (run.task && run.task.branch) || ""),
    el("td", {}, pullRequest(run)));
  view.rows.set(run.id, row);
  return row;
}

function wanted(view, change) {
  return (!view.state || view.state === change.state) && (!view.automation || view.automation === change.automation);
}

// A change the feed told of. A row on the page takes its new state at once; anything
// more (a new run on the first page, a finished run's duration and link) comes from one
// read of the page at most once a second, however fast runs change: a hundred open
// boards cost the server a hundred small reads a second at most, never one per change.
function runsChanged(view, change) {
  const row = view.rows.get(change.id);
  if (row) {
    row.querySelector(".state-cell").replaceChildren(stateBadge(change.state));
    if (wanted(view, change) && !FINISHED.includes(change.state)) return;
  } else if (view.before || !wanted(view, change)) {
    return;
  }
  if (view.refresh) return;
  view.refresh = setTimeout(() => { view.refresh = null; if (board.view === view) loadRuns(view); }, 1000);
}

// ---- one run ----

function runView(id) {
  const view = { kind: "run", id: id, logFrom: 0, logTimer: null };
  view.head = el("div", {});
  view.buttons = el("div", { class: "buttons" });
  view.task = el("section", {});
  view.timeline = el("ol", { class: "timeline", id: "timeline" });
  view.network = el("ol", { class: "timeline", id: "network" });
  view.notify = el("ol", { class: "timeline", id: "notify" });
  view.log = el("pre", { class: "log", id: "log" });
  view.message = el("div", { class: "error", id: "message" });
  show(el("div", {}, view.head, view.buttons, view.message, view.task,
    el("section", {}, el("h2", {}, "Activity"), view.timeline),
    el("section", {}, el("h2", {}, "Network decisions"), view.network),
    el("section", {}, el("h2", {}, "Notify attempts"), view.notify),
    el("section", {}, el("h2", {}, "Log"), view.log)), view);
  loadRun(view);
}

async function loadRun(view) {
  let record;
  try { record = (await getJSON("/api/runs/" + view.id)).body; } catch (error) {
    view.message.textContent = String(error.message);
    return;
  }
  if (board.view !== view) return;
  const run = record.run;
  const task = run.task || {};
  view.head.replaceChildren(el("h1", {}, run.id + " ", stateBadge(run.state), " " + run.automation));
  const parent = run.parent ? el("span", { id: "run-parent" }, runLink(run.parent.run), " (" + roleName(run.parent) + ")")
    : task.follows ? runLink(task.follows) : "none";
  const children = (record.children || []).map((child) => el("li", { "data-id": child.id, "data-role": child.role },
    runLink(child.id), " ", roleName(child), " ", stateBadge(child.state)));
  view.task.replaceChildren(el("h2", {}, "Task"), el("dl", {},
    el("dt", {}, "state"), el("dd", { id: "run-state" }, run.state),
    el("dt", {}, "source"), el("dd", {}, source(run)),
    el("dt", {}, "created"), el("dd", {}, run.created_at + " (" + age(run.created_at) + ")"),
    el("dt", {}, "duration"), el("dd", {}, duration(run)),
    el("dt", {}, "repository"), el("dd", {}, task.repo || ""),
    el("dt", {}, "branch"), el("dd", {}, task.branch || ""),
    el("dt", {}, "pull request"), el("dd", {}, pullRequest(run) || "none"),
    el("dt", {}, "parent"), el("dd", {}, parent),
    el("dt", {}, "children"), el("dd", {}, children.length ? el("ol", { class: "plain", id: "children" }, ...children) : "none"),
    el("dt", {}, "events"), el("dd", {}, (run.event_ids || []).join(", ")),
    el("dt", {}, "result"), el("dd", {}, (run.result && run.result.summary) || run.reason || "")),
    el("h2", {}, "Prompt"), el("pre", { id: "prompt" }, task.prompt || ""));
  const item = (activity) => el("li", {}, el("span", { class: "kind" }, activity.kind), " ", el("time", { title: activity.at }, activity.at.slice(11, 19)), " ", activity.text);
  const activities = record.activities || [];
  view.timeline.replaceChildren(...activities.map(item));
  view.network.replaceChildren(...activities.filter((a) => a.kind === "policy").map(item));
  view.notify.replaceChildren(...activities.filter((a) => a.kind === "notify").map(item));
  view.run = run;
  drawButtons(view, run);
  pollLog(view);
}

function drawButtons(view, run) {
  if (board.access !== "full") { view.buttons.replaceChildren(el("span", { class: "access" }, "read-only: no buttons")); return; }
  const act = (label, id, url, body, confirmText) => el("button", { class: "act", id: id, type: "button", onclick: async () => {
    if (confirmText && !window.confirm(confirmText)) return;
    try {
      const answer = await post(url, body);
      view.message.textContent = "";
      const queued = answer && answer.runs && answer.runs[0];
      if (queued && queued.run) location.hash = "#/runs/" + queued.run;
      else loadRun(view);
    } catch (error) { view.message.textContent = String(error.message); }
  } }, label);
  const buttons = [];
  if (run.state === "awaiting_approval") buttons.push(act("Approve", "approve", "/api/runs/" + run.id + "/approve"));
  if (!FINISHED.includes(run.state)) buttons.push(act("Cancel", "cancel", "/api/runs/" + run.id + "/cancel", { reason: "cancelled on the board" }));
  buttons.push(act("Re-run", "rerun", "/api/runs/" + run.id + "/rerun", {}, "Queue a new run of " + run.automation + " for the same event?"));
  view.buttons.replaceChildren(...buttons);
}

// One reader of the log per view: it goes on every 2 s while the run is unfinished.
async function pollLog(view) {
  if (view.logBusy) return;
  view.logBusy = true;
  clearTimeout(view.logTimer);
  try {
    const chunks = (await getJSON("/api/runs/" + view.id + "/log?from=" + view.logFrom)).body;
    if (board.view !== view) return;
    for (const chunk of chunks) {
      if (chunk.seq < view.logFrom) continue;
      view.log.append(document.createTextNode(chunk.text));
      view.logFrom = chunk.seq + 1;
    }
    if (chunks.length) view.log.scrollTop = view.log.scrollHeight;
  } catch (_) {
    /* the next poll tries again */
  } finally {
    view.logBusy = false;
  }
  if (board.view === view && !FINISHED.includes(view.run.state)) view.logTimer = setTimeout(() => pollLog(view), 2000);
}

// ---- automations, workers and the queue: both drawn from GET /api/status ----

// When `time` is, from `now` (the picture's moment): "in 4m" or "3s ago".
function relative(time, now) {
  if (!time) return "";
  const seconds = (Date.parse(time) - Date.parse(now)) / 1000;
  return seconds >= 0 ? "in " + span(seconds) : span(-seconds) + " ago";
}

function timeOf(time, now) {
  const shown = time.replace(/\.\d+/, "");
  return el("time", { datetime: time, title: time }, shown + " (" + relative(time, now) + ")");
}

// "attempt 2", "verify 1", "join", "follow-up": what a linked run is to its parent.
function roleName(link) {
  const role = (link.role || "").replace("_", "-");
  return link.index ? role + " " + link.index : role;
}

function badge(text, kind) {
  return el("span", { class: "badge " + (kind || "") }, text);
}

// A status view: `draw(view, status)` fills it from each answer. It is read again when
// the feed tells of a change (at most once a second, as the runs list) and every
// `every` ms, for lease expiries, backoffs and cron fires that move with the clock.
function statusView(kind, title, draw, every) {
  const view = { kind: kind, draw: draw, refresh: null, poll: null };
  view.body = el("div", { id: kind });
  view.message = el("div", { class: "error", id: "message" });
  show(el("div", {}, el("h1", {}, title), view.message, view.body), view);
  view.poll = setInterval(() => loadStatus(view), every);
  loadStatus(view);
}

async function loadStatus(view) {
  if (view.busy) return;
  view.busy = true;
  try {
    const status = (await getJSON("/api/status")).body;
    if (board.view !== view) return;
    view.message.textContent = "";
    view.draw(view, status);
  } catch (error) {
    if (board.view === view) view.message.textContent = String(error.message);
  } finally {
    view.busy = false;
  }
}

function statusChanged(view) {
  if (view.refresh) return;
  view.refresh = setTimeout(() => { view.refresh = null; if (board.view === view) loadStatus(view); }, 1000);
}

function table(id, headings, rows, empty) {
  if (!rows.length) return el("p", { class: "muted", id: id }, empty);
  return el("table", { id: id }, el("thead", {}, el("tr", {}, ...headings.map((h) => el("th", {}, h)))), el("tbody", {}, ...rows));
}

function memoryValue(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

function drawAutomations(view, status) {
  const cards = status.automations.map((automation) => {
    const triggers = automation.triggers.map((trigger) => el("li", { class: "trigger" },
      badge(trigger.kind, "kind"),
      trigger.schedule ? el("code", { class: "schedule" }, trigger.schedule) : null,
      trigger.timezone ? " " + trigger.timezone : null,
      trigger.hook ? el("span", {}, " hook ", el("code", {}, "/hooks/" + trigger.hook)) : null,
      trigger.hook_problem ? el("div", { class: "warning hook-problem" }, "hook refuses every request: " + trigger.hook_problem) : null,
      trigger.kind === "cron" ? el("div", { class: "next-fires" }, "next: ",
        ...(trigger.next_fires && trigger.next_fires.length
          ? trigger.next_fires.map((fire) => el("span", { class: "next-fire" }, timeOf(fire, status.now)))
          : ["none (disabled)"])) : null));
    const runs = automation.recent_runs.map((run) => el("li", { "data-id": run.id },
      runLink(run.id), " ", stateBadge(run.state), " ", el("span", { class: "muted", title: run.created_at }, relative(run.created_at, status.now))));
    const memory = Object.entries(automation.memory).map(([key, entry]) => el("tr", { "data-key": key, class: entry.untrusted ? "untrusted" : "" },
      el("td", { class: "memory-key" }, key),
      el("td", {}, el("code", { class: "memory-value" }, memoryValue(entry.value))),
      el("td", {}, entry.written_by ? runLink(entry.written_by) : "a person"),
      el("td", { title: entry.written_at }, relative(entry.written_at, status.now)),
      el("td", {}, entry.untrusted ? badge("untrusted", "warning-badge") : badge("trusted", "ok"))));
    return el("section", { class: "automation", "data-automation": automation.name },
      el("h2", {}, automation.name, " ", automation.enabled ? badge("enabled", "ok") : badge("disabled", "off"), " ", el("span", { class: "muted" }, automation.file)),
      el("h3", {}, "Triggers"), el("ul", { class: "plain" }, ...triggers),
      el("h3", {}, "Recent runs"), runs.length ? el("ul", { class: "plain runs" }, ...runs) : el("p", { class: "muted" }, "no runs yet"),
      el("h3", {}, "Memory"), table(null, ["key", "value", "written by", "written", "trust"], memory, "no entries"));
  });
  view.body.replaceChildren(...(cards.length ? cards : [el("p", { class: "muted" }, "no automations loaded")]));
}

function drawQueue(view, status) {
  const counts = el("div", { class: "counts", id: "counts" },
    ...STATES.map((state) => el("span", { class: "count", "data-state": state }, stateBadge(state), " " + (status.counts[state] || 0))),
    el("span", { class: "count", id: "queue-depth" }, "queue depth " + status.queue_depth));
  const active = status.active.map((run) => el("tr", { "data-id": run.id },
    el("td", {}, runLink(run.id)), el("td", {}, run.automation), el("td", {}, stateBadge(run.state)),
    el("td", {}, run.worker || ""), el("td", {}, run.lease_expires_at ? timeOf(run.lease_expires_at, status.now) : ""),
    el("td", { class: "branch", title: run.branch || "" }, run.branch || "")));
  const waiting = status.waiting.map((run) => el("tr", { "data-id": run.id },
    el("td", {}, runLink(run.id)), el("td", {}, run.automation), el("td", {}, stateBadge(run.state)),
    el("td", {}, badge(run.why.reason, "reason")), el("td", { class: "why" }, run.why.text),
    el("td", { title: run.created_at }, relative(run.created_at, status.now)),
    el("td", { class: "branch", title: run.branch || "" }, run.branch || "")));
  const workers = status.workers.seen.map((worker) => el("tr", { "data-worker": worker.name },
    el("td", {}, worker.name), el("td", {}, worker.remote ? badge("remote", "kind") : badge("local", "kind")),
    el("td", {}, worker.last_claim_at ? relative(worker.last_claim_at, status.now) : "never"),
    el("td", {}, ...worker.leases.map((lease) => el("div", {}, runLink(lease.run), " until ", timeOf(lease.expires_at, status.now))))));
  view.body.replaceChildren(counts,
    el("section", {}, el("h2", {}, "Active"), table("active", ["run", "automation", "state", "worker", "lease expires", "branch"], active, "no run is leased or running")),
    el("section", {}, el("h2", {}, "Waiting"), table("waiting", ["run", "automation", "state", "reason", "why", "queued", "branch"], waiting, "nothing waits"),
      status.waiting_total > status.waiting.length ? el("p", { class: "muted", id: "waiting-more" }, "the first " + status.waiting.length + " of " + status.waiting_total + " waiting runs") : null),
    el("section", {}, el("h2", {}, "Workers"), el("p", { id: "local-workers" }, "local workers: " + status.workers.local),
      table("workers", ["worker", "where", "last claim", "leases"], workers, "no worker has asked for a run yet")));
}

// ---- plumbing ----

function show(root, view) {
  if (board.view && board.view.logTimer) clearTimeout(board.view.logTimer);
  if (board.view && board.view.refresh) clearTimeout(board.view.refresh);
  if (board.view && board.view.poll) clearInterval(board.view.poll);
  board.view = view;
  document.getElementById("view").replaceChildren(root);
}

function route() {
  const fromHash = location.hash.match(/^#\/runs\/(r?\d+)/);
  const fromPath = location.pathname.match(/^\/runs\/(r?\d+)/);
  const id = (fromHash || fromPath || [])[1];
  const page = location.hash.replace(/\?.*$/, "");
  const here = page === "#/automations" ? "nav-automations" : page === "#/queue" || page === "#/workers" ? "nav-queue" : "nav-runs";
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("here", link.id === here);
  if (id) runView(id.startsWith("r") ? id : "r" + id);
  else if (page === "#/automations") statusView("automations", "Automations", drawAutomations, 30000);
  else if (page === "#/queue" || page === "#/workers") statusView("queue", "Workers & queue", drawQueue, 5000);
  else runsView();
}

function listen() {
  const live = document.getElementById("live");
  const events = new EventSource("/api/runs/stream");
  events.onopen = () => { live.textContent = "live"; live.classList.add("on"); };
  events.onerror = () => { live.textContent = "reconnecting"; live.classList.remove("on"); };
  // The server gathers changes for a quarter of a second: each run once, newest state.
  events.addEventListener("runs", (message) => {
    for (const change of JSON.parse(message.data)) {
      const view = board.view;
      if (!view) return;
      if (view.kind === "runs") runsChanged(view, change);
      else if (view.kind === "run" && view.id === change.id) loadRun(view);
      else if (view.kind === "automations" || view.kind === "queue") statusChanged(view);
    }
  });
  // Too many changes were missed to apply one by one: read the view again (no page reload).
  events.addEventListener("reload", () => {
    const view = board.view;
    if (view && view.kind === "runs") loadRuns(view);
    else if (view && view.kind === "run") loadRun(view);
    else if (view) statusChanged(view);
  });
}

async function start() {
  try {
    const session = (await getJSON("/board/session")).body;
    board.csrf = session.csrf;
    board.access = session.access;
  } catch (_) { return; }
  document.getElementById("access").textContent = board.access === "full" ? "" : "read-only";
  document.getElementById("logout").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", credentials: "same-origin", headers: { "x-nightshift-csrf": board.csrf } });
    location.assign("/login");
  });
  window.addEventListener("hashchange", route);
  route();
  listen();
}

start();
