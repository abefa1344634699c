// Small DOM helpers: element builder, labelled fields, error placement, charts, previews.
import { ApiError, blob, describe, get } from "./api.js";

export function h(tag, attrs = {}, ...children) {
  const svg = ["svg", "polyline", "line", "text", "g", "rect", "circle"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag)
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "text") el.textContent = v;
    else if (k === "value" && !svg) el.value = v;
    else if (k in el && !svg && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

let seq = 0;
export const uid = (p = "f") => `${p}-${++seq}`;

// A labelled control with a slot for its error; `field` is the request path it sets.
export function field(labelText, control, { field: name, hint } = {}) {
  if (!control.id) control.id = uid();
  const err = h("div", { class: "field-error", id: `${control.id}-err`, role: "alert" });
  control.setAttribute("aria-describedby", err.id);
  if (name) control.dataset.field = name;
  return h("div", { class: "field" }, h("label", { for: control.id }, labelText), control,
           hint ? h("div", { class: "hint" }, hint) : null, err);
}

export function select(options, value) {
  return h("select", {}, options.map(([v, text]) =>
    h("option", { value: v, selected: v === value }, text)));
}

export function status(message, kind = "info") {
  const box = document.getElementById("status");
  box.replaceChildren(message ? h("div", { class: `msg ${kind}` }, message) : "");
}

export function showError(e) { status(describe(e), "error"); }

// Normalise an API field path: drop discriminator segments and "body".
function norm(path) {
  return String(path).split(".").filter((s) => !["body", "manual", "auto"].includes(s)).join(".");
}

// Put each error next to the control whose data-field it names; returns the unplaced ones.
export function placeErrors(root, details) {
  clearErrors(root);
  const rest = [];
  const controls = [...root.querySelectorAll("[data-field]")];
  for (const d of details || []) {
    const target = norm(d.field);
    const tail = (p) => p.split(".").slice(-2).join(".");
    const ctl = controls.find((c) => norm(c.dataset.field) === target)
      || controls.find((c) => target.includes(".") && tail(norm(c.dataset.field)) === tail(target));
    if (!ctl) { rest.push(d); continue; }
    ctl.setAttribute("aria-invalid", "true");
    const slot = document.getElementById(`${ctl.id}-err`);
    if (slot) slot.textContent = slot.textContent ? `${slot.textContent}; ${d.message}` : d.message;
  }
  const first = root.querySelector("[aria-invalid=true]");
  if (first) first.focus();
  return rest;
}

export function clearErrors(root) {
  root.querySelectorAll("[aria-invalid]").forEach((c) => c.removeAttribute("aria-invalid"));
  root.querySelectorAll(".field-error").forEach((s) => { s.textContent = ""; });
}

export function errorDetails(e) {
  return e instanceof ApiError ? e.details : [];
}

export function stateBadge(state) { return h("span", { class: `state ${state}` }, state); }

export function fmtTime(s) {
  if (s === null || s === undefined) return "–";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export const fmt = (x, d = 3) => (typeof x === "number" ? Number(x.toFixed(d)).toString() : String(x ?? "–"));

export function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

// A line chart of one or more series [{name, points: [[x, y]...]}] as SVG.
export function chart(title, series, { width = 420, height = 200 } = {}) {
  const pts = series.flatMap((s) => s.points);
  const svg = h("svg", { class: "chart", width, height, role: "img", "aria-label": title,
                         viewBox: `0 0 ${width} ${height}` });
  svg.append(h("text", { x: 8, y: 16, "font-size": 13 }, title));
  if (!pts.length) { svg.append(h("text", { x: 8, y: 40, "font-size": 12 }, "no data yet")); return svg; }
  const xs = pts.map((p) => p[0]); const ys = pts.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys, Math.min(...ys) + 1e-6)];
  const sx = (x) => 40 + ((x - x0) / (x1 - x0)) * (width - 60);
  const sy = (y) => height - 24 - ((y - y0) / (y1 - y0)) * (height - 50);
  svg.append(h("text", { x: 4, y: sy(y1) + 4, "font-size": 10 }, fmt(y1, 3)),
             h("text", { x: 4, y: sy(y0), "font-size": 10 }, fmt(y0, 3)),
             h("text", { x: width - 60, y: height - 6, "font-size": 10 }, `epoch ${fmt(x1, 2)}`));
  const colours = ["#1d4ed8", "#b91c1c", "#047857", "#92400e"];
  series.forEach((s, i) => {
    if (!s.points.length) return;
    svg.append(h("polyline", { fill: "none", stroke: colours[i % 4], "stroke-width": 2,
                               points: s.points.map(([x, y]) => `${sx(x)},${sy(y)}`).join(" ") }),
               h("text", { x: 120 + 110 * i, y: 16, "font-size": 11, fill: colours[i % 4] }, s.name),
               s.points.length < 30 ? s.points.map(([x, y]) => h("circle", { cx: sx(x), cy: sy(y), r: 3, fill: colours[i % 4] })) : []);
  });
  return svg;
}

// An <img> whose bytes come from an authenticated fetch (the key never goes in its URL).
export function authImage(path, alt) {
  const img = h("img", { alt, "data-src": path });
  loadInto(img, path);
  return img;
}

export async function loadInto(img, path) {
  img.dataset.src = path;
  img.dataset.loaded = "false";
  try {
    const b = await blob(path);
    if (img.dataset.src !== path) return; // a newer request replaced this one
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(b);
    img.dataset.loaded = "true";
  } catch (e) {
    img.alt = `${img.alt} (${describe(e)})`;
    img.dataset.loaded = "error";
  }
}

export const WINDOWS = ["auto", "brain", "subdural", "bone", "lung", "mediastinal", "pe"];

// A grid of case previews of one dataset, with a window chooser for CT.
export async function previewGrid(ds, { limit = 8, offset = 0 } = {}) {
  const box = h("section", { class: "previews", "aria-label": `Case previews of ${ds.name}` });
  const page = await get(
    `/v1/datasets/${encodeURIComponent(ds.id)}/cases?limit=${limit}&offset=${offset}`);
  let windowName = "auto";
  const grid = h("div", { class: "grid" });
  const src = (c) => `/v1/datasets/${encodeURIComponent(ds.id)}/cases/${encodeURIComponent(c.case_id)}`
    + `/preview.png?window=${windowName}&size=256`;
  const imgs = page.items.map((c) => {
    const img = authImage(src(c), `Case ${c.case_id}`);
    const labels = c.labels.length ? c.labels.join(", ") : c.boxes.length
      ? `${c.boxes.length} box(es)` : c.mask ? "mask" : "no finding";
    grid.append(h("figure", {}, img, h("figcaption", {}, `${c.case_id}: ${labels}`)));
    return [img, c];
  });
  if (ds.modality === "CT") {
    const chooser = select(WINDOWS.map((w) => [w, w]), windowName);
    chooser.addEventListener("change", () => {
      windowName = chooser.value;
      imgs.forEach(([img, c]) => loadInto(img, src(c)));
    });
    box.append(field("CT window", chooser, { hint: "window/level the previews are drawn with" }));
  }
  box.append(h("p", { class: "muted" }, `${page.total} cases; showing ${page.items.length}. `
    + "Boxes and masks are drawn over the image."), grid);
  return box;
}

export function healthReport(ds) {
  const st = ds.stats;
  if (!st) return h("p", { class: "muted" }, "No statistics recorded for this dataset.");
  const rows = Object.entries(st.class_counts).map(([c, n]) =>
    h("tr", {}, h("td", {}, c), h("td", {}, n), h("td", {}, `${fmt(100 * (st.positive_rate[c] || 0), 1)} %`),
      h("td", { class: n === 0 ? "bad" : "" }, n === 0 ? "no example" : n < 5 ? "few examples" : "ok")));
  const sizes = st.image_sizes ? `${st.image_sizes.min_rows}–${st.image_sizes.max_rows} × `
    + `${st.image_sizes.min_cols}–${st.image_sizes.max_cols} px` : "–";
  return h("div", { class: "health" },
    kv([["Cases", ds.num_cases], ["Images", st.num_images], ["Image sizes", sizes],
        ["Patients", `${st.patients} (${st.cases_without_patient} cases without a patient id)`],
        ["Splits", Object.entries(st.splits).map(([k, v]) => `${k} ${v}`).join(", ") || "assigned at training"]]),
    h("table", { "aria-label": "Classes" }, h("tr", {}, h("th", {}, "class"), h("th", {}, "cases"),
      h("th", {}, "positive rate"), h("th", {}, "health")), rows));
}
