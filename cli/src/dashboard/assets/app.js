// The Switchboard dashboard: polls /api/overview and /api/dlq every second,
// watches /api/events as Server-Sent Events. Everything that came from the
// system is put on the page as text (textContent), never as HTML: event data
// and dead-letter errors come from callers.
"use strict";

const POLL_MS = 1000;
const MAX_EVENTS = 200;
const CHANGE_HEADER = { "x-switchboard-dashboard": "1" };

const $ = (selector) => document.querySelector(selector);

/** A table row of cells; a cell is text, or [text, className]. */
function row(cells, attributes = {}) {
  const tr = document.createElement("tr");
  for (const [name, value] of Object.entries(attributes)) tr.setAttribute(name, value);
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell);
    else if (Array.isArray(cell)) { td.textContent = cell[0]; td.className = cell[1]; }
    else td.textContent = cell;
    tr.append(td);
  }
  return tr;
}

function fill(tbody, rows, empty) {
  if (rows.length === 0) rows = [row([[empty, "muted"]])];
  tbody.replaceChildren(...rows);
}

function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

const rate = (x) => [x.toFixed(1), "num"];

/** Bucket counts added since `before` (both `[[upper µs, count], …]`). */
function since(now, before) {
  const old = new Map(before || []);
  return now.map(([bound, count]) => [bound, count - (old.get(bound) || 0)]).filter(([, c]) => c > 0);
}

/** The q quantile of `[[upper µs, count], …]` in ms, or null: the same rule as the kit's. */
function quantile(buckets, q) {
  const total = buckets.reduce((sum, [, c]) => sum + c, 0);
  if (total === 0) return null;
  const rank = Math.max(1, Math.ceil(q * total));
  let seen = 0;
  for (const [bound, count] of buckets) {
    seen += count;
    if (seen >= rank) return bound / 1000;
  }
  return buckets[buckets.length - 1][0] / 1000;
}

const ms = (x) => [x === null ? "–" : x < 10 ? x.toFixed(2) : x.toFixed(0), "num"];

// ---- status --------------------------------------------------------------

function showStatus(ok, text) {
  const status = $("#status");
  status.textContent = text;
  status.className = `status ${ok ? "ok" : "error"}`;
  document.body.classList.toggle("down", !ok);
}

async function getJson(path) {
  let response;
  try {
    response = await fetch(path, { cache: "no-store" });
  } catch (e) {
    throw new Error("the dashboard is unreachable (is switchboard up running?)");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// ---- overview --------------------------------------------------------------

// Counters seen at the last poll, by "instance/endpoint", for rates.
let previous = new Map();

function overview(data) {
  const now = Date.now();
  const seen = new Map();
  const info = new Map(data.info.map((i) => [i.id, i]));
  const endpoints = new Map(); // subject -> aggregate
  const services = [];
  const breakers = [];
  const budgets = [];
  for (const stats of data.stats.sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id))) {
    let reqRate = 0, errRate = 0, inFlight = 0;
    let data0 = null;
    for (const e of stats.endpoints) {
      const key = `${stats.id}/${e.name}`;
      const before = previous.get(key);
      const seconds = before ? (now - before.at) / 1000 : 0;
      const r = before && seconds > 0 ? Math.max(0, e.num_requests - before.requests) / seconds : 0;
      const er = before && seconds > 0 ? Math.max(0, e.num_errors - before.errors) / seconds : 0;
      const d = e.data || {};
      seen.set(key, { at: now, requests: e.num_requests, errors: e.num_errors, latency: d.latency_us || [] });
      // Since the last poll; until there is one, since the start.
      const recent = since(d.latency_us || [], before && before.latency);
      data0 = data0 || d;
      reqRate += r; errRate += er; inFlight += d.in_flight || 0;
      const agg = endpoints.get(e.subject) || { name: e.name, subject: e.subject, instances: 0, r: 0, er: 0, requests: 0, time: 0, inFlight: 0, queued: 0, lastError: "", schema: null, latency: new Map(), total: new Map() };
      agg.instances += 1; agg.r += r; agg.er += er;
      for (const [bound, count] of recent) agg.latency.set(bound, (agg.latency.get(bound) || 0) + count);
      for (const [bound, count] of d.latency_us || []) agg.total.set(bound, (agg.total.get(bound) || 0) + count);
      agg.requests += e.num_requests; agg.time += e.processing_time;
      agg.inFlight += d.in_flight || 0; agg.queued += d.queued || 0;
      if (e.last_error) agg.lastError = e.last_error;
      const described = (info.get(stats.id)?.endpoints || []).find((x) => x.name === e.name);
      if (described && described.metadata) agg.schema = described.metadata;
      endpoints.set(e.subject, agg);
    }
    if (data0) {
      for (const [subject, b] of Object.entries(data0.circuit_breakers || {})) {
        breakers.push(row([stats.name, subject, [b.state, b.state], [String(b.consecutive_failures), "num"], [String(b.opened), "num"], [String(b.short_circuited), "num"]]));
      }
      if (data0.retries || data0.retries_refused) {
        budgets.push(`${stats.name} ${stats.id.slice(-6)}: ${data0.retries} retries, ${data0.retries_refused} refused by the budget`);
      }
    }
    services.push(row([
      stats.name, stats.id, stats.version,
      duration(now - Date.parse(stats.started)),
      rate(reqRate), [errRate.toFixed(1), errRate > 0 ? "num bad" : "num"], [String(inFlight), "num"],
    ], { "data-service": stats.name }));
  }
  previous = seen;
  fill($("#services tbody"), services, "no service answers $SRV.STATS");
  fill($("#endpoints tbody"), [...endpoints.values()].sort((a, b) => a.subject.localeCompare(b.subject)).map((e) => {
    const name = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = e.name;
    name.append(summary);
    if (e.schema) {
      const pre = document.createElement("pre");
      const pretty = (s) => { try { return JSON.stringify(JSON.parse(s), null, 1); } catch { return s || "-"; } };
      pre.textContent = `${e.schema.description || ""}\nrequest: ${pretty(e.schema.request_schema)}\nresponse: ${pretty(e.schema.response_schema)}`;
      name.append(pre);
    }
    // The last second's; when it had no request, since the start (grey).
    const sorted = (m) => [...m.entries()].sort((a, b) => a[0] - b[0]);
    const recent = sorted(e.latency);
    const latency = recent.length ? recent : sorted(e.total);
    const shade = (cell) => (recent.length ? cell : [cell[0], "num muted"]);
    return row([name, e.subject, [String(e.instances), "num"], rate(e.r), [e.er.toFixed(1), e.er > 0 ? "num bad" : "num"], shade(ms(quantile(latency, 0.5))), shade(ms(quantile(latency, 0.99))), [String(e.inFlight), "num"], [String(e.queued), "num"], [e.lastError, "bad"]], { "data-subject": e.subject });
  }), "no endpoints");
  fill($("#breakers tbody"), breakers, "no calls made yet");
  $("#budgets").textContent = budgets.join(" · ");
  // Event streams first, then the DLQ, then the state buckets' streams.
  const order = (s) => (s.name.startsWith("KV_") ? 2 : s.name === "DLQ" ? 1 : 0);
  const streams = [...data.streams].sort((a, b) => order(a) - order(b) || a.name.localeCompare(b.name));
  fill($("#streams tbody"), streams.flatMap((s) => {
    // A KV bucket's stream is state, not events: shown, but quieter.
    const head = row([[s.name, "subject"], s.subjects.join(" "), [String(s.messages), "num"], "", "", ""], { "data-stream": s.name, class: s.name.startsWith("KV_") ? "bucket" : "" });
    return [head, ...s.consumers.map((c) => row(["", c.held_by ? `${c.name} · held by ${c.held_by}` : c.name, "", [String(c.pending), "num"], [String(c.ack_pending), "num"], [String(c.redelivered), "num"]], { "data-consumer": c.name }))];
  }), "no streams");
  return data.server;
}

// ---- dead letters -----------------------------------------------------------

function deadLetters(letters) {
  const count = $("#dlq-count");
  count.textContent = String(letters.length);
  count.className = letters.length ? "count some" : "count";
  $("#dlq-purge").disabled = letters.length === 0;
  fill($("#dlq tbody"), letters.map((l) => {
    const actions = document.createElement("span");
    const show = document.createElement("button");
    show.textContent = "show";
    show.onclick = () => showLetter(l.id);
    const replay = document.createElement("button");
    replay.textContent = "replay";
    replay.className = "replay";
    replay.onclick = () => change(`/api/dlq/${l.id}/replay`, replay);
    actions.append(show, " ", replay);
    return row([[String(l.id), "num"], l.subject, l.consumer, [String(l.deliveries), "num"], l.failed_at, [l.error, "bad"], actions], { "data-dead-letter": String(l.id) });
  }), "no dead letters");
}

async function showLetter(id) {
  const detail = $("#dlq-detail");
  try {
    detail.textContent = JSON.stringify(await getJson(`/api/dlq/${id}`), null, 2);
  } catch (e) {
    detail.textContent = `cannot show dead letter ${id}: ${e.message}`;
  }
  detail.hidden = false;
}

async function change(path, button) {
  if (button) button.disabled = true;
  try {
    const response = await fetch(path, { method: "POST", headers: CHANGE_HEADER });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) alertText(body.error || `HTTP ${response.status}`);
  } catch (e) {
    alertText(e.message);
  }
  await poll();
}

function alertText(text) {
  const detail = $("#dlq-detail");
  detail.textContent = text;
  detail.hidden = false;
}

$("#dlq-purge").addEventListener("click", () => {
  if (confirm("Remove every dead letter? They cannot be replayed afterwards.")) change("/api/dlq/purge", $("#dlq-purge"));
});

// ---- live events ---------------------------------------------------------------

let source = null;

function watch(subject) {
  if (source) source.close();
  const state = $("#event-state");
  $("#events").replaceChildren();
  source = new EventSource(`/api/events?subject=${encodeURIComponent(subject)}`);
  source.onopen = () => { state.textContent = `watching ${subject}`; };
  source.onerror = () => { state.textContent = "feed interrupted; reconnecting…"; };
  source.addEventListener("event", (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch { return; }
    const li = document.createElement("li");
    li.dataset.subject = event.subject;
    const time = document.createElement("span");
    time.className = "muted";
    time.textContent = new Date().toLocaleTimeString() + " ";
    const subjectSpan = document.createElement("span");
    subjectSpan.className = "subject";
    subjectSpan.textContent = event.subject;
    const rest = document.createElement("span");
    rest.textContent = ` ${event.attributes ? event.attributes.id : ""} ${JSON.stringify(event.data)}`;
    li.append(time);
    if (event.trace_id) {
      // First, so a long event never pushes it out of sight.
      const trace = document.createElement("button");
      trace.className = "trace";
      trace.textContent = "trace";
      trace.title = event.trace_id;
      trace.onclick = () => { $("#trace-id").value = event.trace_id; showTrace(event.trace_id); };
      li.append(trace, " ");
    }
    li.append(subjectSpan, rest);
    const list = $("#events");
    list.prepend(li);
    while (list.children.length > MAX_EVENTS) list.lastChild.remove();
  });
  source.addEventListener("dropped", (message) => {
    const li = document.createElement("li");
    li.className = "bad";
    try { li.textContent = `… ${JSON.parse(message.data).dropped} events not shown (the page was too slow)`; } catch { return; }
    $("#events").prepend(li);
  });
}

$("#event-filter").addEventListener("submit", (e) => {
  e.preventDefault();
  watch($("#event-subject").value.trim() || "events.>");
});

// ---- one trace ---------------------------------------------------------------------

async function showTrace(id) {
  const note = $("#trace-note");
  const tbody = $("#trace tbody");
  id = id.trim().toLowerCase();
  let spans;
  try {
    spans = await getJson(`/api/traces/${encodeURIComponent(id)}`);
  } catch (e) {
    note.textContent = e.message;
    tbody.replaceChildren();
    return;
  }
  if (spans.length === 0) {
    const status = await getJson("/api/traces").catch(() => ({ spans: 0 }));
    note.textContent = status.spans === 0
      ? "No spans reach the dashboard: start with `switchboard up --traces` (or look in the collector OTEL_EXPORTER_OTLP_ENDPOINT names)."
      : `No span of trace ${id} (yet, or no longer: the dashboard keeps the newest spans only).`;
    tbody.replaceChildren();
    return;
  }
  // Depth-first from the roots (spans whose parent is not here).
  const byId = new Map(spans.map((s) => [s.span_id, s]));
  const children = new Map();
  const roots = [];
  for (const s of spans) {
    if (s.parent_span_id && byId.has(s.parent_span_id)) {
      if (!children.has(s.parent_span_id)) children.set(s.parent_span_id, []);
      children.get(s.parent_span_id).push(s);
    } else roots.push(s);
  }
  const start = Math.min(...spans.map((s) => s.start_unix_nanos));
  const end = Math.max(...spans.map((s) => s.end_unix_nanos));
  const total = Math.max(1, end - start);
  const rows = [];
  const visit = (span, depth) => {
    const name = document.createElement("span");
    name.textContent = `${"  ".repeat(depth)}${depth ? "└ " : ""}${span.name}`;
    name.style.whiteSpace = "pre";
    const bar = document.createElement("div");
    bar.className = span.error ? "bar failed" : "bar";
    bar.style.marginLeft = `${((span.start_unix_nanos - start) / total) * 100}%`;
    bar.style.width = `${((span.end_unix_nanos - span.start_unix_nanos) / total) * 100}%`;
    const took = (span.end_unix_nanos - span.start_unix_nanos) / 1e6;
    rows.push(row([name, span.service, span.kind, [took.toFixed(2), "num"], bar], { "data-span": span.span_id, "data-service": span.service, class: "span-row" }));
    rows[rows.length - 1].firstChild.className = "span";
    for (const child of children.get(span.span_id) || []) visit(child, depth + 1);
  };
  roots.forEach((r) => visit(r, 0));
  const services = new Set(spans.map((s) => s.service));
  note.textContent = `${spans.length} spans in ${services.size} services, ${(total / 1e6).toFixed(1)} ms`;
  tbody.replaceChildren(...rows);
}

$("#trace-form").addEventListener("submit", (e) => {
  e.preventDefault();
  showTrace($("#trace-id").value);
});

// ---- the loop ----------------------------------------------------------------

async function poll() {
  try {
    const [data, letters] = await Promise.all([getJson("/api/overview"), getJson("/api/dlq")]);
    const server = overview(data);
    deadLetters(letters);
    showStatus(true, `connected to NATS at ${server}`);
  } catch (e) {
    showStatus(false, `${e.message} — retrying`);
  }
}

async function loop() {
  await poll();
  setTimeout(loop, POLL_MS);
}

watch("events.>");
loop();
// A link to one trace: /#trace=<id>.
const linked = /^#trace=([0-9a-fA-F]{32})$/.exec(location.hash);
if (linked) {
  $("#trace-id").value = linked[1];
  showTrace(linked[1]);
}
