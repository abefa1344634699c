// A finished run's held-out report (metrics.json: intervals, operating points, undefined
// metrics) and a search's trials (GET /v1/tasks/{id}/search), on the task page.
import { ApiError, blob, get } from "./api.js";
import { fmt, h } from "./ui.js";

const num = (v, digits = 4) => (typeof v === "number" ? fmt(v, digits) : "–");

export async function heldOutReport(rec) {
  if (!rec.artifacts.some((a) => a.name === "metrics.json")) return null;
  let doc;
  try { doc = JSON.parse(await (await blob(`/v1/tasks/${rec.task_id}/artifacts/metrics.json`)).text()); }
  catch { return null; }
  const parts = [];
  const intervals = Object.entries(doc.intervals || {});
  if (intervals.length) {
    const resamples = doc.bootstrap?.resamples;
    parts.push(h("table", { "aria-label": "95 % confidence intervals" },
      h("tr", {}, h("th", {}, "metric"), h("th", {}, "estimate"), h("th", {}, "95 % CI")),
      intervals.map(([name, iv]) => h("tr", {}, h("th", {}, name), h("td", {}, num(iv.estimate)),
        h("td", {}, iv.low === null ? "undefined" : `${num(iv.low, 3)} – ${num(iv.high, 3)}`)))),
      h("p", { class: "muted" }, `Bootstrap over the validation split${resamples ? ` (${resamples} resamples` : ""}`
        + `${doc.bootstrap?.unit ? `, by ${doc.bootstrap.unit}` : ""}${resamples ? ")" : ""}.`));
  }
  const points = Object.entries(doc.operating_points || {});
  if (points.length) {
    parts.push(h("h3", {}, "Operating point"), h("table", { "aria-label": "Operating points" },
      h("tr", {}, h("th", {}, "class"), h("th", {}, "threshold"), h("th", {}, "rule"),
        h("th", {}, "sensitivity"), h("th", {}, "specificity")),
      points.map(([name, p]) => h("tr", {}, h("th", {}, name), h("td", {}, num(p.threshold, 3)),
        h("td", {}, p.rule || p.method || "–"), h("td", {}, num(p.sensitivity, 3)),
        h("td", {}, num(p.specificity, 3))))));
  }
  const undefinedOnes = Object.entries(doc.undefined || {});
  if (undefinedOnes.length) {
    parts.push(h("h3", {}, "Not defined on this data"),
      h("ul", { "aria-label": "Undefined metrics" }, undefinedOnes.map(([name, why]) =>
        h("li", {}, `${name}: ${typeof why === "string" ? why : JSON.stringify(why)}`))));
  }
  return parts.length ? h("div", {}, h("h2", {}, "Held-out report"), ...parts) : null;
}

export async function searchTrials(rec) {
  let view;
  try { view = await get(`/v1/tasks/${rec.task_id}/search`); }
  catch (e) { if (e instanceof ApiError && e.status === 404) return null; throw e; }
  const params = [...new Set(view.trials.flatMap((t) => Object.keys(t.params)))];
  return h("div", {}, h("h2", {}, "Search"),
    h("p", {}, `${view.status}: ${view.trials.length} of ${view.budget.trials ?? "?"} trials, `
      + `objective ${view.objective} (${view.direction})`
      + (view.best !== null ? `, best trial ${view.best} = ${num(view.best_value)}` : "")
      + (view.stop_reason ? `; ${view.stop_reason}` : "")),
    h("table", { "aria-label": "Search trials" },
      h("tr", {}, h("th", {}, "trial"), h("th", {}, "state"), h("th", {}, view.objective),
        ...params.map((p) => h("th", {}, p)), h("th", {}, "note")),
      view.trials.map((t) => h("tr", { "data-trial": t.number, class: t.number === view.best ? "best" : "" },
        h("td", {}, h("a", { href: `#/tasks/${t.task_id}` }, `${t.number}${t.number === view.best ? " (best)" : ""}`)),
        h("td", {}, t.state), h("td", {}, num(t.value)),
        ...params.map((p) => h("td", {}, t.params[p] === undefined ? "–" : String(typeof t.params[p] === "number" ? fmt(t.params[p], 5) : t.params[p]))),
        h("td", {}, t.note || "")))));
}
