// Tasks: the list with live progress bars, and one task's page.
import { ApiError, blob, describe, get, post, sse } from "./api.js";
import { heldOutReport, searchTrials } from "./report.js";
import { authImage, chart, field, fmt, fmtTime, h, kv, select, showError, stateBadge, status } from "./ui.js";

const STATES = ["requested", "ready", "rejected", "running", "completed", "failed", "cancelled"];
const FINAL = new Set(["completed", "failed", "rejected", "cancelled"]);
let live = [];
const MAX_STREAMS = 3;

export function stopLive() { live.forEach((c) => c.abort()); live = []; }

function follow(taskId, onEvent) {
  const ctl = new AbortController();
  live.push(ctl);
  sse(`/v1/tasks/${encodeURIComponent(taskId)}/events`, onEvent, ctl.signal)
    .catch((e) => { if (e.name !== "AbortError") showError(e); });
  return ctl;
}

function progressOf(p) {
  if (!p) return 0;
  // step and total_steps count the whole run, every epoch included
  const done = p.total_steps ? p.step / p.total_steps : p.epoch / p.epochs;
  return Math.max(0, Math.min(1, done));
}

function bar(rec) {
  const value = rec.state === "completed" ? 1 : progressOf(rec.progress);
  return h("progress", { max: 1, value, "aria-label": `progress of ${rec.name}`,
                         dataset: { task: rec.task_id } });
}

export async function tasksView(params) {
  const state = params.get("state") || "";
  const q = state ? `&state=${state}` : "";
  const page = await get(`/v1/tasks?limit=50${q}`);
  const filter = select([["", "all states"], ...STATES.map((s) => [s, s])], state);
  filter.addEventListener("change", () => { location.hash = filter.value ? `#/tasks?state=${filter.value}` : "#/tasks"; });
  const rows = page.items.map((rec) => {
    const cell = h("td", {}, bar(rec), " ", h("span", { class: "pct" }, ""));
    const badge = h("td", {}, stateBadge(rec.state));
    const row = h("tr", { dataset: { task: rec.task_id } },
      h("td", {}, h("a", { href: `#/tasks/${rec.task_id}` }, rec.name)), badge,
      h("td", {}, rec.flow), h("td", {}, rec.network || "–"), cell,
      h("td", {}, new Date(rec.created_at).toLocaleString()));
    // At most a few streams: a browser keeps about six connections per host.
    if (!FINAL.has(rec.state) && live.length < MAX_STREAMS) {
      follow(rec.task_id, (name, ev) => {
        if (name === "progress") {
          cell.querySelector("progress").value = progressOf(ev.data);
          cell.querySelector(".pct").textContent = `epoch ${ev.data.epoch}/${ev.data.epochs}`;
        } else {
          const s = { started: "running", ready: "ready" }[name] || (FINAL.has(name) ? name : null);
          if (s) badge.replaceChildren(stateBadge(s));
          if (name === "completed") cell.querySelector("progress").value = 1;
        }
      });
    }
    return row;
  });
  const polled = page.items.filter((r) => !FINAL.has(r.state)).length > MAX_STREAMS;
  if (polled) { // the others are refreshed from the list every few seconds
    const timer = setInterval(async () => {
      try {
        const fresh = await get(`/v1/tasks?limit=50${q}`);
        for (const rec of fresh.items) {
          const row = rows.find((r) => r.dataset.task === rec.task_id);
          if (!row) continue;
          row.children[1].replaceChildren(stateBadge(rec.state));
          row.querySelector("progress").value = rec.state === "completed" ? 1 : progressOf(rec.progress);
        }
      } catch (e) { showError(e); }
    }, 3000);
    live.push({ abort: () => clearInterval(timer) });
  }
  return h("section", {}, h("h1", {}, "Tasks"),
    h("div", { class: "row" }, field("Filter by state", filter),
      h("a", { href: "#/new", class: "button" }, "Create new task")),
    page.items.length ? h("table", { "aria-label": "Tasks" },
      h("tr", {}, ["Name", "State", "Flow", "Network", "Progress", "Created"].map((t) => h("th", {}, t))), rows)
      : h("p", {}, "No tasks yet. ", h("a", { href: "#/new" }, "Create your first task.")),
    h("p", { class: "muted" }, `${page.total} task(s)`));
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

async function specOf(rec) {
  if (!rec.artifacts.some((a) => a.name === "spec.json")) return null;
  try { return JSON.parse(await (await blob(`/v1/tasks/${rec.task_id}/artifacts/spec.json`)).text()); }
  catch { return null; }
}

async function download(rec, art) {
  try {
    const b = await blob(`/v1/tasks/${rec.task_id}/artifacts/${encodeURIComponent(art.name)}`);
    const a = h("a", { href: URL.createObjectURL(b), download: art.name });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (e) { showError(e); }
}

function lineage(rec, spec) {
  if (!spec) return h("p", { class: "muted" }, "Available once the task has completed.");
  return kv([["Dataset", `${spec.dataset.dataset_id} (sha256 ${spec.dataset.sha256.slice(0, 16)}…)`],
    ["Network", `${spec.model.entry_id} (${spec.model.pretrained ? "pretrained" : "from scratch"})`],
    ["Weights", spec.model.weights_key ? `${spec.model.weights_key} (sha256 ${(spec.model.weights_sha256 || "").slice(0, 16)}…)` : "none (from scratch)"],
    ["Preset", spec.preset || "–"],
    spec.lineage ? ["Retrained from", h("a", { href: `#/tasks/${spec.lineage.base_task_id}` }, spec.lineage.base_task_id)] : null,
    spec.lineage ? ["Base dataset", `${spec.lineage.base_dataset_id} (sha256 ${spec.lineage.base_dataset_sha256.slice(0, 16)}…)`] : null]);
}

function curves() {
  const points = { loss: [], metric: [] };
  let metricName = null;
  const box = h("div", { class: "charts" });
  const draw = () => box.replaceChildren(chart("training loss", [{ name: "loss", points: points.loss }]),
    chart(metricName ? `validation ${metricName}` : "validation metric", [{ name: metricName || "", points: points.metric }]));
  draw();
  return { box, add(p) {
    const x = p.total_steps ? (p.epochs * p.step) / p.total_steps : p.epoch;
    if (typeof p.loss === "number") points.loss.push([x, p.loss]);
    const names = Object.keys(p.metrics || {});
    if (names.length) {
      metricName = metricName || names.find((n) => n.startsWith("auc") || n.startsWith("map") || n.startsWith("dice")) || names[0];
      if (typeof p.metrics[metricName] === "number") points.metric.push([x, p.metrics[metricName]]);
    }
    draw();
  } };
}

export async function taskView(taskId) {
  let rec = await get(`/v1/tasks/${encodeURIComponent(taskId)}`);
  const spec = FINAL.has(rec.state) ? await specOf(rec) : null;
  const head = h("div", { class: "row" }, stateBadge(rec.state));
  const prog = h("progress", { max: 1, value: rec.state === "completed" ? 1 : progressOf(rec.progress), "aria-label": "progress" });
  const progText = h("span", { class: "progress-text" }, rec.progress ? `epoch ${rec.progress.epoch}/${rec.progress.epochs}` : "");
  const live_ = curves();
  const finished = h("div", { class: "finished" });
  const cancel = h("button", { type: "button", class: "danger", disabled: FINAL.has(rec.state) }, "Cancel");
  cancel.addEventListener("click", async () => {
    try { await post(`/v1/tasks/${rec.task_id}/cancel`, { reason: "cancelled from the console" });
      status("Cancellation requested; the runner stops within a few seconds."); cancel.disabled = true;
    } catch (e) { showError(e); }
  });
  const retrain = h("a", { class: "button", href: `#/new?flow=retrain&base=${rec.task_id}`,
                           hidden: rec.state !== "completed" }, "Retrain from this model");
  const wasFinal = FINAL.has(rec.state);
  // The stream replays the history first: re-render once, when a live task ends.
  const rerender = () => window.dispatchEvent(new HashChangeEvent("hashchange"));
  finished.append(await finishedPart(rec, spec));
  const search = h("div", { class: "search" });
  const showSearch = async () => {
    try { search.replaceChildren(...[await searchTrials(rec)].filter(Boolean)); } catch (e) { showError(e); }
  };
  await showSearch();
  if (search.childElementCount && !FINAL.has(rec.state)) {  // a running search: its trials move
    const timer = setInterval(showSearch, 3000);
    live.push({ abort: () => clearInterval(timer) });
  }
  follow(rec.task_id, (name, ev) => {
    if (name === "progress") {
      prog.value = progressOf(ev.data);
      progText.textContent = `epoch ${ev.data.epoch}/${ev.data.epochs}, step ${ev.data.step}/${ev.data.total_steps}`
        + (ev.data.eta_s ? `, about ${fmtTime(ev.data.eta_s)} left` : "");
      live_.add(ev.data);
    } else if (name === "started") head.replaceChildren(stateBadge("running"));
    else if (FINAL.has(name)) {
      if (name === "completed") prog.value = 1;
      head.replaceChildren(stateBadge(name));
      if (!wasFinal) setTimeout(rerender, 300); // the record has the artifacts a moment later
    }
  });
  return h("section", {}, h("h1", {}, rec.name), head,
    kv([["Task id", rec.task_id], ["Flow", rec.flow], ["Task type", rec.task_type || spec?.task_type || "–"],
        ["Network", rec.network || spec?.model?.entry_id || "–"], ["Dataset", h("a", { href: `#/datasets/${rec.dataset_id}` }, rec.dataset_id)],
        ["Created", new Date(rec.created_at).toLocaleString()]]),
    h("div", { class: "row" }, prog, progText),
    h("div", { class: "actions" }, cancel, retrain), search,
    h("h2", {}, "Live curves"), live_.box, finished);
}

async function finishedPart(rec, spec) {
  const parts = [];
  if (rec.errors.length) {
    parts.push(h("h2", {}, "Errors"), h("ul", {}, rec.errors.map((e) => h("li", {}, `${e.field}: ${e.message} (${e.code})`))));
  }
  if (Object.keys(rec.metrics).length) {
    parts.push(h("h2", {}, "Metrics"), h("table", { "aria-label": "Metrics" },
      Object.entries(rec.metrics).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, fmt(v, 4))))));
  }
  const report = await heldOutReport(rec);
  if (report) parts.push(report);
  if (rec.duration_s) parts.push(h("p", {}, `Trained in ${fmtTime(rec.duration_s)}.`));
  const plots = rec.artifacts.filter((a) => a.name.endsWith(".png"));
  if (plots.length) {
    parts.push(h("h2", {}, "Plots"), h("div", { class: "plots" },
      plots.map((a) => authImage(`/v1/tasks/${rec.task_id}/artifacts/${encodeURIComponent(a.name)}`, a.name))));
  }
  if (rec.artifacts.length) {
    parts.push(h("h2", {}, "Artifacts"), h("table", { "aria-label": "Artifacts" },
      h("tr", {}, h("th", {}, "file"), h("th", {}, "size"), h("th", {}, "sha256"), h("th", {}, "")),
      rec.artifacts.map((a) => h("tr", {}, h("td", {}, a.name), h("td", {}, bytes(a.size)),
        h("td", {}, h("code", {}, a.sha256.slice(0, 16) + "…")),
        h("td", {}, h("button", { type: "button", onclick: () => download(rec, a), "aria-label": `Download ${a.name}` }, "Download"))))));
  }
  parts.push(h("h2", {}, "Lineage"), lineage(rec, spec));
  const card = rec.artifacts.find((a) => a.name === "model_card.md");
  if (card) {
    const pre = h("pre", { class: "card-md", "aria-label": "Model card" }, "loading…");
    blob(`/v1/tasks/${rec.task_id}/artifacts/model_card.md`).then(async (b) => { pre.textContent = await b.text(); })
      .catch((e) => { pre.textContent = describe(e); });
    parts.push(h("h2", {}, "Model card"), pre);
  }
  return h("div", {}, parts);
}

export { FINAL, ApiError };
