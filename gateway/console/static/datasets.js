// Datasets: list, detail (health report, case browser) and import from the browser.
import { ApiError, describe, get, post, upload, uuid } from "./api.js";
import { field, fmt, h, healthReport, placeErrors, previewGrid, select, showError, status } from "./ui.js";

const FORMATS = [
  ["folder-csv", "folder + labels CSV (image,label or one 0/1 column per class)"],
  ["rsna-ich", "RSNA intracranial hemorrhage CSV (ID,Label) + DICOM"],
  ["coco", "COCO JSON with boxes"],
  ["masks", "images/ + masks/ PNGs of class indices"],
  ["siim-rle", "SIIM run-length CSV (ImageId,EncodedPixels)"],
];

export async function datasetsView() {
  const page = await get("/v1/datasets?limit=200");
  return h("section", {}, h("h1", {}, "Datasets"),
    h("p", {}, h("a", { href: "#/import", class: "button" }, "Import a dataset")),
    page.items.length ? h("table", { "aria-label": "Datasets" },
      h("tr", {}, ["Name", "Id", "Annotation", "Modality", "Cases", "Classes"].map((t) => h("th", {}, t))),
      page.items.map((d) => h("tr", {}, h("td", {}, h("a", { href: `#/datasets/${d.id}` }, d.name)),
        h("td", {}, h("code", {}, d.id)), h("td", {}, d.annotation_type), h("td", {}, d.modality),
        h("td", {}, d.num_cases), h("td", {}, d.classes.join(", ")))))
      : h("p", {}, "No datasets yet."));
}

export async function datasetView(id) {
  const ds = await get(`/v1/datasets/${encodeURIComponent(id)}`);
  const browser = h("div", {});
  let offset = 0;
  const per = 12;
  const prev = h("button", { type: "button" }, "Previous cases");
  const next = h("button", { type: "button" }, "Next cases");
  const show = async () => {
    try {
      browser.replaceChildren(await previewGrid(ds, { limit: per, offset }));
      prev.disabled = offset === 0; next.disabled = offset + per >= ds.num_cases;
    } catch (e) { showError(e); }
  };
  prev.addEventListener("click", () => { offset = Math.max(0, offset - per); show(); });
  next.addEventListener("click", () => { offset += per; show(); });
  await show();
  return h("section", {}, h("h1", {}, ds.name),
    h("p", {}, h("code", {}, ds.id), ` · ${ds.annotation_type} · ${ds.modality} · classes ${ds.classes.join(", ")}`),
    h("p", { class: "muted" }, `manifest sha256 ${ds.manifest_sha256}`),
    h("h2", {}, "Health report"), healthReport(ds),
    h("h2", {}, "Cases"), browser, h("div", { class: "actions" }, prev, next));
}

function relPath(file) {
  const rel = file.webkitRelativePath || file.name;
  const parts = rel.split("/");
  return (parts.length > 1 && file.webkitRelativePath ? parts.slice(1) : parts).join("/");
}

export function importView() {
  const name = h("input", { type: "text", required: true, maxlength: 200 });
  const format = select(FORMATS, "folder-csv");
  const folder = h("input", { type: "file", webkitdirectory: true, multiple: true });
  const files = h("input", { type: "file", multiple: true });
  const skip = h("input", { type: "checkbox", id: "skip-bad" });
  const bar = h("progress", { max: 1, value: 0, "aria-label": "upload and import progress" });
  const what = h("p", { class: "progress-text", "aria-live": "polite" });
  const report = h("div", { class: "report" });
  const go = h("button", { type: "submit", class: "primary" }, "Upload and import");
  const form = h("form", { "aria-label": "Import a dataset", novalidate: true },
    h("h1", {}, "Import a dataset"),
    h("p", {}, "Pick a folder (or its files) and its format. The files are streamed to the "
      + "store under your tenant's import area, then the import job checks every case and registers the dataset."),
    field("Dataset name", name, { field: "name" }),
    field("Format", format, { field: "format" }),
    field("Folder", folder, { field: "source", hint: "every file under it, keeping the sub-folders" }),
    field("…or files", files, { field: "files", hint: "when the browser cannot pick a folder" }),
    h("div", { class: "field" }, skip, h("label", { for: "skip-bad", class: "inline" }, " Skip bad cases instead of failing")),
    h("div", { class: "actions" }, go), h("div", { class: "row" }, bar), what, report);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const picked = [...folder.files, ...files.files];
    const problems = [];
    if (!name.value.trim()) problems.push({ field: "name", message: "give the dataset a name" });
    if (!picked.length) problems.push({ field: "source", message: "pick a folder or files" });
    if (placeErrors(form, problems).length || problems.length) return;
    go.disabled = true; report.replaceChildren();
    try {
      const source = `web-${uuid().replace(/-/g, "").slice(0, 12)}`;
      let sent = 0;
      const total = picked.reduce((n, f) => n + f.size, 0) || 1;
      for (const f of picked) {
        what.textContent = `uploading ${relPath(f)} (${picked.indexOf(f) + 1}/${picked.length})`;
        await upload(`/v1/uploads/${source}/${relPath(f).split("/").map(encodeURIComponent).join("/")}`, f);
        sent += f.size; bar.value = 0.5 * (sent / total);
      }
      const accepted = await post("/v1/datasets/imports", { name: name.value.trim(), format: format.value,
                                                            source, skip_bad: skip.checked },
                                  { extraHeaders: { "Idempotency-Key": `console-${source}` } });
      await followImport(accepted.import_id, bar, what, report);
    } catch (e) {
      if (e instanceof ApiError && e.details.length) placeErrors(form, e.details);
      showError(e); what.textContent = describe(e);
    } finally { go.disabled = false; }
  });
  return form;
}

async function followImport(importId, bar, what, report) {
  for (;;) {
    if (!report.isConnected && report.dataset.started) return null; // the user left the page
    report.dataset.started = "1";
    const st = await get(`/v1/datasets/imports/${importId}`);
    const p = st.progress || {};
    what.textContent = `import ${st.state}: ${p.phase || ""} ${p.done || 0}/${p.total || "?"}`;
    if (p.total) bar.value = 0.5 + 0.5 * (p.done / p.total);
    if (st.state === "completed" || st.state === "failed") {
      bar.value = st.state === "completed" ? 1 : bar.value;
      report.replaceChildren(importReport(st));
      status(st.state === "completed" ? "Dataset imported." : `Import failed: ${st.error || ""}`,
             st.state === "completed" ? "info" : "error");
      return st;
    }
    await new Promise((r) => setTimeout(r, 700));
  }
}

function importReport(st) {
  const r = st.report || {};
  const problems = [...(r.problems || []).map((p) => ({ ...p, kind: "problem" })),
                    ...(r.warnings || []).map((p) => ({ ...p, kind: "warning" }))];
  return h("section", { "aria-label": "Import report" }, h("h2", {}, `Import ${st.state}`),
    st.dataset_id && st.state === "completed"
      ? h("p", {}, "Dataset ", h("a", { href: `#/datasets/${st.dataset_id}` }, st.dataset_id),
          ` registered: ${r.num_cases ?? "?"} cases, ${r.annotation_type || ""} ${r.modality || ""}, classes ${(r.classes || []).join(", ")}.`)
      : h("p", { class: "bad" }, st.error ? `${st.error.code || ""} ${st.error.message || st.error}` : "Nothing was registered."),
    problems.length ? h("table", { "aria-label": "Problems and warnings" },
      h("tr", {}, ["", "case", "code", "message"].map((t) => h("th", {}, t))),
      problems.map((p) => h("tr", {}, h("td", { class: p.kind === "problem" ? "bad" : "muted" }, p.kind),
        h("td", {}, p.case_id || "–"), h("td", {}, p.code), h("td", {}, p.message))))
      : h("p", { class: "ok" }, "No problems found."),
    (r.skipped || []).length ? h("p", {}, `${r.skipped.length} case(s) skipped.`) : null,
    h("p", { class: "muted" }, `${fmt(st.progress?.uploaded ?? 0, 0)} image(s) stored.`));
}
