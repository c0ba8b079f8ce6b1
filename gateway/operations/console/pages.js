// The console's pages: each a `show()` (called when it becomes visible) and its form handlers.
// Every call goes through api.call, so a refused token anywhere sends the user back to sign in.

import { call, query } from "./api.js";
import { duration, el, fields, iso, lastDay, replaceChildren, table } from "./dom.js";

const REFRESH_MS = 2000;

// -- destinations at a glance -------------------------------------------------------------------
export class Destinations {
  constructor(onError) {
    this.onError = onError;
    this.timer = null;
    this.previous = new Map(); // id -> {delivered, at}: the delivery rate is the growth between refreshes
    this.ids = [];
  }

  show() {
    this.stop();
    this.refresh();
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
  }

  stop() {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  async load() {
    const [states, ages] = await Promise.all([call("/admin/destinations"), call("/admin/oldest-ages")]);
    this.ids = states.destinations.map((d) => d.id);
    return { rows: states.destinations, ages: new Map(ages.destinations.map((a) => [a.id, a.oldest_age_s])) };
  }

  async refresh() {
    let loaded;
    try {
      loaded = await this.load();
    } catch (error) {
      this.stop();
      this.onError(error);
      return;
    }
    const now = performance.now();
    // Fields of clustering (the answering replica, whether its consumer is the active one) are shown when
    // the API has them, never required.
    const shown = (k) => /replica|^active/.test(k);
    const extra = [...new Set(loaded.rows.flatMap((r) => Object.keys(r).filter(shown)))];
    const columns = [
      ["id", "Destination"], ["state", "State"], ["circuit", "Circuit"], ["backlog", "Backlog", true],
      ["parked", "Parked", true], ["oldest", "Oldest message", true], ["rate", "Delivered/s", true],
      ["last", "Last delivery"], ...extra.map((k) => [k, k[0].toUpperCase() + k.slice(1).replaceAll("_", " ")]),
    ];
    const rows = loaded.rows.map((d) => {
      const before = this.previous.get(d.id);
      const delivered = d.delivered_total;
      let rate = "–";
      if (before && delivered !== undefined && delivered >= before.delivered && now > before.at) {
        rate = ((delivered - before.delivered) / ((now - before.at) / 1000)).toFixed(1);
      }
      if (delivered !== undefined) this.previous.set(d.id, { delivered, at: now });
      const last = d.last_delivery_at ? `${duration((Date.now() - Date.parse(d.last_delivery_at)) / 1000)} ago` : "never";
      const state = el("span", { className: `state state-${d.state.replace(/[^a-z_]/g, "")}` }, d.state);
      const row = { ...d, state, rate, last, oldest: duration(loaded.ages.get(d.id)), _data: { destination: d.id } };
      for (const k of extra) row[k] = d[k] === null || d[k] === undefined ? "–" : `${d[k]}`;
      return row;
    });
    replaceChildren("destinations-result", table("Every destination, as the admin API reports it", columns, rows, { id: "destinations-table" }));
    document.getElementById("destinations-updated").textContent = new Date().toLocaleTimeString();
  }
}

// The window's fields follow "the last 24 hours" each time the page is shown, until the user edits one.
function fillWindow(prefix) {
  const fields = [document.getElementById(`${prefix}-since`), document.getElementById(`${prefix}-until`)];
  if (fields.some((f) => f.value && f.dataset.auto !== "yes")) return;
  const window = lastDay();
  [fields[0].value, fields[1].value] = [window.since, window.until];
  for (const f of fields) {
    f.dataset.auto = "yes";
    f.addEventListener("input", () => delete f.dataset.auto, { once: true });
  }
}

// -- outage timeline ----------------------------------------------------------------------------
export async function showOutages() {
  fillWindow("outages");
}

export async function loadOutages(form) {
  const params = fields(form);
  const body = await call(`/admin/outages${query(params)}`);
  const start = Date.parse(body.since);
  const span = Date.parse(body.until) - start;
  const nodes = body.destinations.map((d) => {
    const track = el("div", { className: "track", attrs: { "aria-hidden": "true" } });
    for (const p of d.open) {
      const bar = el("span", { className: "bar", title: `${p.opened_at} .. ${p.closed_at}` });
      bar.style.left = `${((Date.parse(p.opened_at) - start) / span) * 100}%`;
      bar.style.width = `${Math.max(0.3, (p.duration_s * 1000 * 100) / span)}%`;
      track.append(bar);
    }
    const rows = d.open.map((p) => ({
      opened: p.opened_at,
      closed: p.still_open ? "still open" : p.closed_at,
      duration: duration(p.duration_s),
      note: [p.open_before_window ? "open before the window" : "", p.still_open ? "still open" : ""].filter(Boolean).join(", "),
    }));
    const columns = [["opened", "Opened"], ["closed", "Closed"], ["duration", "Open for", true], ["note", "Note"]];
    const detail = rows.length
      ? table(`Circuit open periods of ${d.id}`, columns, rows)
      : el("p", { className: "hint" }, "No open period in the window.");
    return el("article", { className: "outage", dataset: { destination: d.id } }, el("h2", {}, d.id), track, detail);
  });
  replaceChildren("outages-result", el("p", { className: "hint" }, `${body.since} .. ${body.until}`), ...nodes);
}

// -- parked messages and replay -----------------------------------------------------------------
function parkedFilters(form) {
  const f = fields(form);
  const filters = { type: f.type, from: f.from, message_id: f.message_id, since: f.since, until: f.until };
  for (const k of Object.keys(filters)) if (!filters[k]) delete filters[k];
  if (f.limit) filters.limit = Number.parseInt(f.limit, 10);
  return { destination: f.destination, filters };
}

export async function listParked(form) {
  const { destination, filters } = parkedFilters(form);
  const body = await call(`/admin/destinations/${encodeURIComponent(destination)}/parked${query(filters)}`);
  const columns = [
    ["message_id", "Message id"], ["message_type", "Type"], ["sender", "From"], ["reason", "Reason"],
    ["status", "Status", true], ["attempts", "Attempts", true], ["parked_at", "Parked at"], ["excerpt", "Backend said"],
  ];
  const rows = body.parked.map((p) => ({ ...p, _data: { messageId: p.message_id } }));
  const caption = `${rows.length} parked message(s) of ${destination} matching the filters`;
  const shown = table(caption, columns, rows, { id: "parked-table" });
  document.getElementById("parked-table").replaceWith(shown);
}

export class Replay {
  constructor(parkedForm) {
    this.parkedForm = parkedForm;
    this.pending = null; // the request a dry run previewed; only that one may be confirmed
  }

  request(dryRun) {
    const { destination, filters } = parkedFilters(this.parkedForm);
    const rate = document.getElementById("replay-rate").value.trim();
    const body = { ...filters, dry_run: dryRun };
    if (rate) body.rate = Number(rate);
    return { destination, body };
  }

  async preview() {
    const { destination, body } = this.request(true);
    const report = await call(`/admin/destinations/${encodeURIComponent(destination)}/replay`, { method: "POST", body });
    const n = report.messages.length;
    const ids = report.messages.slice(0, 10).map((m) => m.message_id).join(", ");
    document.getElementById("replay-summary").textContent =
      `Dry run: ${n} of ${report.present} parked message(s) of ${destination} would be replayed` +
      (n ? ` (${ids}${n > 10 ? ", ..." : ""}).` : ".") + (n ? " Replay them?" : "");
    this.pending = n ? { destination, body: { ...body, dry_run: false } } : null;
    document.getElementById("replay-run").hidden = !n;
    document.getElementById("replay-confirm").hidden = false;
    document.getElementById("replay-result").textContent = "";
    (n ? document.getElementById("replay-run") : document.getElementById("replay-cancel")).focus();
  }

  cancel() {
    this.pending = null;
    document.getElementById("replay-confirm").hidden = true;
  }

  async run() {
    if (this.pending === null) return;
    const { destination, body } = this.pending;
    this.cancel();
    const r = await call(`/admin/destinations/${encodeURIComponent(destination)}/replay`, { method: "POST", body });
    const note = r.timed_out ? ` Timed out after ${r.timeout_s}s: run it again for the rest.` : "";
    document.getElementById("replay-result").textContent =
      `Replayed ${r.replayed} message(s) to ${destination}; ${r.skipped} skipped, ${r.failed} failed.${note}`;
    await listParked(this.parkedForm);
  }
}

// -- message lookup -----------------------------------------------------------------------------
export async function lookUp(form) {
  const f = fields(form);
  const path = `/admin/messages/${encodeURIComponent(f.sender)}/${encodeURIComponent(f.message_id)}`;
  const m = await call(path);
  const facts = [
    ["Status", m.status], ["Type", m.message_type], ["Receiver", m.receiver], ["Destination", m.destination],
    ["Received", m.received_at], ["Delivered", m.delivered_at ?? "not yet"], ["Attempts", m.attempts],
    ["Parked because", m.parked_reason ?? "–"], ["Size (bytes)", m.size ?? "–"], ["SHA-256", m.sha256 ?? "–"],
  ];
  const list = el("dl", { className: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", { dataset: { field: k } }, v)]));
  const columns = [
    ["at", "At"], ["event", "Event"], ["destination", "Destination"], ["status", "HTTP status", true],
    ["error", "Error"], ["took", "Took", true], ["detail", "Detail"],
  ];
  const rows = m.history.map((e) => ({ ...e, took: e.duration_s === undefined ? "–" : duration(e.duration_s), _data: { event: e.event } }));
  const history = table(`History of ${m.message_id} from ${m.sender}, oldest first`, columns, rows, { id: "message-history" });
  replaceChildren("message-result", el("h2", {}, `${m.sender} ${m.message_id}`), list, history);
}

// -- outage report ------------------------------------------------------------------------------
export async function showReport() {
  fillWindow("report");
}

export async function loadReport(form) {
  const r = await call(`/admin/report${query(fields(form))}`);
  const t = r.total;
  const summary = el("p", { id: "report-total" },
    `${t.received} received, ${t.delivered} delivered, ${t.parked} parked, ${t.pending} pending, ` +
    `${t.duplicates} duplicates, ${t.conflicts} conflicts (status as of ${r.as_of}).`);
  const columns = [
    ["destination", "Destination"], ["message_type", "Type"], ["received", "Received", true],
    ["delivered", "Delivered", true], ["parked", "Parked", true], ["pending", "Pending", true],
    ["duplicates", "Duplicates", true], ["conflicts", "Conflicts", true], ["longest", "Longest receipt to delivery"],
  ];
  const rows = r.groups.map((g) => ({
    ...g,
    longest: g.longest_message_id ? `${duration(g.longest_s)} (${g.longest_message_id})` : "–",
    _data: { destination: g.destination, type: g.message_type },
  }));
  const outages = Object.entries(r.circuit_open).flatMap(([d, periods]) =>
    periods.map((p) => el("li", {}, `${d}: circuit open ${p.opened_at} .. ${p.still_open ? "still open" : p.closed_at} (${duration(p.duration_s)})`)));
  replaceChildren(
    "report-result",
    summary,
    table(`Messages received ${r.since} .. ${r.until}`, columns, rows, { id: "report-table" }),
    el("h2", {}, "Circuit open periods"),
    outages.length ? el("ul", {}, outages) : el("p", { className: "hint" }, "None in the window."),
  );
}

// The CSV comes with the bearer header, so it is fetched, then handed to the browser as a file.
export async function downloadCsv(form) {
  const f = fields(form);
  const response = await call(`/admin/report.csv${query(f)}`, { raw: true });
  const blob = await response.blob();
  const disposition = response.headers.get("Content-Disposition") ?? "";
  const name = /filename="([^"]+)"/.exec(disposition)?.[1] ?? `swgw-report-${iso(Date.now())}.csv`;
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  return name;
}
