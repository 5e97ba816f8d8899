// The nightshift board: the runs list and a run, kept live by server-sent events.
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
  const query = new URLSearchParams({ limit: String(PAGE) });
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
  const parent = task.follows ? runLink(task.follows) : "none";
  view.task.replaceChildren(el("h2", {}, "Task"), el("dl", {},
    el("dt", {}, "state"), el("dd", { id: "run-state" }, run.state),
    el("dt", {}, "source"), el("dd", {}, source(run)),
    el("dt", {}, "created"), el("dd", {}, run.created_at + " (" + age(run.created_at) + ")"),
    el("dt", {}, "duration"), el("dd", {}, duration(run)),
    el("dt", {}, "repository"), el("dd", {}, task.repo || ""),
    el("dt", {}, "branch"), el("dd", {}, task.branch || ""),
    el("dt", {}, "pull request"), el("dd", {}, pullRequest(run) || "none"),
    el("dt", {}, "follows"), el("dd", {}, parent),
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

// ---- plumbing ----

function show(root, view) {
  if (board.view && board.view.logTimer) clearTimeout(board.view.logTimer);
  if (board.view && board.view.refresh) clearTimeout(board.view.refresh);
  board.view = view;
  document.getElementById("view").replaceChildren(root);
}

function route() {
  const fromHash = location.hash.match(/^#\/runs\/(r?\d+)/);
  const fromPath = location.pathname.match(/^\/runs\/(r?\d+)/);
  const id = (fromHash || fromPath || [])[1];
  if (id) runView(id.startsWith("r") ? id : "r" + id);
  else runsView();
}

function listen() {
  const live = document.getElementById("live");
  const events = new EventSource("/api/runs/stream");
  events.onopen = () => { live.textContent = "live"; live.classList.add("on"); };
  events.onerror = () => { live.textContent = "reconnecting"; live.classList.remove("on"); };
  events.addEventListener("run", (message) => {
    const change = JSON.parse(message.data);
    const view = board.view;
    if (!view) return;
    if (view.kind === "runs") runsChanged(view, change);
    else if (view.kind === "run" && view.id === change.id) loadRun(view);
  });
  // Too many changes were missed to apply one by one: read the view again (no page reload).
  events.addEventListener("reload", () => {
    const view = board.view;
    if (view && view.kind === "runs") loadRuns(view);
    else if (view && view.kind === "run") loadRun(view);
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
