// Small DOM helpers. Text always goes in as textContent, never as HTML, so nothing a
// backend or partner wrote (parking reasons, excerpts) can run as script.

// el("td", {className: "num", dataset: {field: "backlog"}}, "12", otherNode)
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "attrs") for (const [a, v] of Object.entries(value)) node.setAttribute(a, v);
    else node[key] = value;
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(`${child}`));
  }
  return node;
}

// A table: `columns` are [key, heading, numeric?]; `rows` objects of key -> text or node.
// Each row may carry `_data` (dataset of the <tr>); each cell gets data-field=<key>.
export function table(caption, columns, rows, props = {}) {
  const head = el("tr", {}, columns.map(([, heading, num]) => el("th", { scope: "col", className: num ? "num" : "" }, heading)));
  const body = rows.map((row) =>
    el(
      "tr",
      { dataset: row._data ?? {} },
      columns.map(([key, , num]) => el("td", { className: num ? "num" : "", dataset: { field: key } }, row[key] ?? "–")),
    ),
  );
  return el("table", props, el("caption", {}, caption), el("thead", {}, head), el("tbody", {}, body));
}

// "35ms", "4.2s", "12m00s", "3h04m05s" (gateway/operations/report.py's duration); "–" for null.
export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)}ms`;
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  const whole = Math.round(seconds);
  const h = Math.floor(whole / 3600);
  const m = Math.floor((whole % 3600) / 60);
  const s = whole % 60;
  const pad = (n) => `${n}`.padStart(2, "0");
  return h ? `${h}h${pad(m)}m${pad(s)}s` : `${m}m${pad(s)}s`;
}

// ISO-8601 in UTC to the second: 2026-12-01T16:00:00Z
export function iso(ms) {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

// The default window: the 24 hours before the next whole minute.
export function lastDay() {
  const until = Math.ceil(Date.now() / 60000) * 60000;
  return { since: iso(until - 86400000), until: iso(until) };
}

export function replaceChildren(id, ...nodes) {
  document.getElementById(id).replaceChildren(...nodes);
}

// A form's fields as an object of trimmed strings.
export function fields(form) {
  return Object.fromEntries([...new FormData(form)].map(([k, v]) => [k, `${v}`.trim()]));
}
