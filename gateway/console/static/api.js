// The JSON API over fetch, with the API key from sessionStorage as a bearer header.
// The key never goes into a URL or a log; an ApiError carries the error body's details.

const KEY = "radtrain.apiKey";

export function apiKey() { return sessionStorage.getItem(KEY); }
export function setApiKey(key) { sessionStorage.setItem(KEY, key); }
export function clearApiKey() { sessionStorage.removeItem(KEY); }

export class ApiError extends Error {
  constructor(status, code, message, details = [], retryAfter = null) {
    super(message);
    this.status = status; this.code = code; this.details = details; this.retryAfter = retryAfter;
  }
}

const listeners = { unauthorized: [] };
export function onUnauthorized(fn) { listeners.unauthorized.push(fn); }

function headers(extra = {}) {
  const h = { ...extra };
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function failure(resp) {
  let body = null;
  try { body = await resp.json(); } catch { /* not JSON (a proxy's page) */ }
  const err = body && body.error ? body.error : {};
  const retry = resp.headers.get("Retry-After");
  const message = err.message || `${resp.status} ${resp.statusText}`;
  const e = new ApiError(resp.status, err.code || `http_${resp.status}`, message,
                         err.details || [], retry);
  if (resp.status === 401) listeners.unauthorized.forEach((fn) => fn(e));
  return e;
}

async function send(method, path, { body, raw, extraHeaders, signal } = {}) {
  const init = { method, headers: headers(extraHeaders), signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  } else if (raw !== undefined) {
    init.headers["Content-Type"] = "application/octet-stream";
    init.body = raw;
  }
  let resp;
  for (let attempt = 0; ; attempt += 1) {
    try {
      resp = await fetch(path, init);
    } catch (exc) {
      if (exc.name === "AbortError") throw exc;
      throw new ApiError(0, "network", "the gateway cannot be reached; check that it is running");
    }
    // A read refused for the rate limit or a brief outage is retried after Retry-After
    // (writes are not: the caller shows the message and the user decides).
    const again = method === "GET" && (resp.status === 429 || resp.status === 503) && attempt < 3;
    if (!again) break;
    const wait = Math.min(5, Math.max(0.5, Number(resp.headers.get("Retry-After")) || 1));
    await new Promise((r) => setTimeout(r, wait * 1000));
  }
  if (!resp.ok) throw await failure(resp);
  return resp;
}

export async function api(method, path, body, opts = {}) {
  const resp = await send(method, path, { ...opts, body });
  if (resp.status === 204) return null;
  const type = resp.headers.get("Content-Type") || "";
  return type.includes("json") ? resp.json() : resp.text();
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body, opts) => api("POST", path, body, opts);

export async function blob(path, opts = {}) {
  return (await send("GET", path, opts)).blob();
}

export async function upload(path, file, opts = {}) {
  return (await send("PUT", path, { ...opts, raw: file })).json();
}

// Server-sent events over fetch (EventSource cannot send an Authorization header).
// Calls onEvent(name, data, id) for each event until the stream ends or signal aborts.
export async function sse(path, onEvent, signal) {
  const resp = await send("GET", path, { signal, extraHeaders: { Accept: "text/event-stream" } });
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const ev = { name: "message", data: "", id: null };
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const i = line.indexOf(":");
        const field = i < 0 ? line : line.slice(0, i);
        const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
        if (field === "event") ev.name = val;
        else if (field === "data") ev.data += val;
        else if (field === "id") ev.id = val;
      }
      if (ev.data) {
        let data = null;
        try { data = JSON.parse(ev.data); } catch { data = ev.data; }
        onEvent(ev.name, data, ev.id);
      }
    }
  }
}

// A human sentence for any failure, status by status.
export function describe(e) {
  if (!(e instanceof ApiError)) return String(e && e.message ? e.message : e);
  switch (e.status) {
    case 401: return "Your API key was refused (missing, invalid or revoked). Sign in again.";
    case 404: return `Not found: ${e.message}`;
    case 409: return `Conflict: ${e.message}`;
    case 413: return `Too large: ${e.message}`;
    case 422: return `Please correct: ${e.message}`;
    case 429: return `Too many requests; retry in ${e.retryAfter || "a few"} s.`;
    case 503: return `The service is briefly unavailable (${e.message}); retry in a moment.`;
    default: return e.message;
  }
}

export function uuid() {
  return crypto.randomUUID ? crypto.randomUUID()
    : Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}
