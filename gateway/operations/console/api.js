// The admin API, asked with the token this tab signed in with. The token lives in
// sessionStorage (gone when the tab closes) and travels only as a bearer header: no cookie,
// so a cross-site page cannot make the browser send it (no CSRF surface).

const KEY = "swgw.adminToken";

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

export class Unauthorized extends Error {}

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

// GET (or `method`) `path`; the parsed JSON, or the Response itself with `raw`.
// 401 throws Unauthorized (sign in again); any other error an ApiError with the problem's detail.
export async function call(path, { method = "GET", body, raw = false } = {}) {
  const headers = { Authorization: `Bearer ${token.get() ?? ""}` };
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) throw new Unauthorized("The admin token was refused: sign in again.");
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const problem = await response.json();
      detail = problem.detail || problem.title || detail;
    } catch {
      // not problem+json: keep the status line
    }
    throw new ApiError(response.status, detail);
  }
  return raw ? response : response.json();
}

// "?a=1&b=2" from an object, leaving out empty values ("" when nothing is left).
export function query(params) {
  const kept = Object.entries(params).filter(([, v]) => v !== undefined && v !== null && `${v}`.trim() !== "");
  const text = new URLSearchParams(kept.map(([k, v]) => [k, `${v}`.trim()])).toString();
  return text ? `?${text}` : "";
}
