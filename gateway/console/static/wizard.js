// "Create new task": one step at a time, Back and a summary at every step.
import { blob, get, post, uuid } from "./api.js";
import { presetCard } from "./catalog.js";
import { field, fmt, h, healthReport, placeErrors, previewGrid, select, showError, status } from "./ui.js";
import { modelStep, tuningStep, reviewStep, request } from "./wizard_steps.js";

const TYPES = {
  classification: "Image classification: one label (or several) per image",
  detection: "Object detection: boxes around findings",
  segmentation: "Segmentation: a mask of each finding",
};
const NETWORK_WORDS = { auto: "auto-selected (data type + preference)", manual: "chosen from the zoo",
  preset: "fixed by the preset", base_task: "that of the base task" };
const TUNING_WORDS = { auto_with_preferences: "auto, with preferences", auto_without_preferences: "auto",
  manual: "full manual", search: "hyperparameter search" };
const net = (w) => NETWORK_WORDS[w] || w;
const tun = (w) => TUNING_WORDS[w] || w;

function annotationText(rule) {
  if (rule.annotation_from === "task_type") {
    return "any that fits the task type (" + rule.annotations.map((a) => `${a.task_type}: ${a.annotation_types.join("/")}`).join("; ") + ")";
  }
  return `fixed by the ${rule.annotation_from.replace("_", " ")}`;
}

const flowStep = {
  id: "flow", title: "Flow",
  async render(s) {
    s.flows = s.flows || (await get("/v1/flows")).items;
    const table = h("table", { "aria-label": "What each flow fixes" },
      h("tr", {}, ["flow", "annotation", "network", "tuning"].map((t) => h("th", {}, t))),
      s.flows.map((r) => h("tr", {}, h("td", {}, r.flow), h("td", {}, annotationText(r)),
        h("td", {}, r.network.map(net).join(" or ")), h("td", {}, r.tuning.map(tun).join(" or ")))));
    const cards = h("div", { class: "cards", role: "radiogroup", "aria-label": "Flow" }, s.flows.map((r) =>
      h("div", { class: "card", dataset: { flow: r.flow } },
        h("input", { type: "radio", name: "flow", id: `flow-${r.flow}`, value: r.flow, checked: s.flow === r.flow,
                     "data-field": "flow", onchange: () => { s.flow = r.flow; s.reset(); } }),
        h("h3", {}, h("label", { for: `flow-${r.flow}` }, r.flow[0].toUpperCase() + r.flow.slice(1))),
        h("p", {}, r.summary),
        h("dl", { class: "kv" }, h("dt", {}, "annotation"), h("dd", {}, annotationText(r)),
          h("dt", {}, "network"), h("dd", {}, r.network.map(net).join(" or ")),
          h("dt", {}, "tuning"), h("dd", {}, r.tuning.map(tun).join(" or "))))));
    return h("div", {}, cards, h("h2", {}, "The three flows"), table);
  },
  check: (s) => (s.flow ? [] : [{ field: "flow", message: "choose a flow" }]),
};

const typeStep = {
  id: "type", title: "Task type",
  async render(s) {
    const rule = s.flows.find((r) => r.flow === "general");
    return h("div", { class: "cards", role: "radiogroup", "aria-label": "Task type" }, rule.task_types.map((t) =>
      h("div", { class: "card", dataset: { taskType: t } },
        h("input", { type: "radio", name: "task_type", id: `type-${t}`, value: t, checked: s.task_type === t,
                     "data-field": "task_type", onchange: () => { s.task_type = t; s.dataset = null; s.model = null; } }),
        h("h3", {}, h("label", { for: `type-${t}` }, t)), h("p", {}, TYPES[t] || ""),
        h("p", { class: "muted" }, "annotation: " + (rule.annotations.find((a) => a.task_type === t)?.annotation_types || []).join(", ")))));
  },
  check: (s) => (s.task_type ? [] : [{ field: "task_type", message: "choose a task type" }]),
};

const presetStep = {
  id: "preset", title: "Preset",
  async render(s) {
    s.presets = s.presets || (await get("/v1/presets")).items;
    return h("div", { class: "cards", role: "radiogroup", "aria-label": "Preset" }, s.presets.map((p) => {
      const card = presetCard(p, { checked: s.preset?.id === p.id, pick: (x) => { s.preset = x; s.dataset = null; } });
      card.querySelector("input").dataset.field = "preset";
      return card;
    }));
  },
  check: (s) => (s.preset ? [] : [{ field: "preset", message: "choose a preset" }]),
};

async function specOf(taskId) {
  try { return JSON.parse(await (await blob(`/v1/tasks/${taskId}/artifacts/spec.json`)).text()); }
  catch { return null; }
}

const baseStep = {
  id: "base", title: "Base task",
  async render(s) {
    const page = await get("/v1/tasks?state=completed&limit=50");
    const specs = await Promise.all(page.items.slice(0, 25).map((r) => specOf(r.task_id)));
    s.baseSpecs = Object.fromEntries(page.items.slice(0, 25).map((r, i) => [r.task_id, specs[i]]));
    if (!page.items.length) return h("p", {}, "No completed task yet: train one in the general or specialized flow first.");
    return h("table", { "aria-label": "Completed tasks" },
      h("tr", {}, ["", "task", "network", "metrics", "lineage"].map((t) => h("th", {}, t))),
      page.items.slice(0, 25).map((r) => {
        const sp = s.baseSpecs[r.task_id];
        const id = `base-${r.task_id}`;
        return h("tr", { dataset: { task: r.task_id } },
          h("td", {}, h("input", { type: "radio", name: "base", id, value: r.task_id, "data-field": "base_task_id",
            checked: s.base?.task_id === r.task_id, onchange: () => { s.base = r; s.baseSpec = sp; s.dataset = null; } })),
          h("td", {}, h("label", { for: id }, r.name), h("div", { class: "muted" }, r.task_id)),
          h("td", {}, r.network || "–"),
          h("td", {}, Object.entries(r.metrics).slice(0, 4).map(([k, v]) => `${k} ${fmt(v)}`).join(", ")),
          h("td", {}, sp ? `dataset ${sp.dataset.dataset_id} (${sp.dataset.modality}, ${sp.dataset.annotation_type})`
            + (sp.preset ? `, preset ${sp.preset}` : "") + (sp.lineage ? `, retrained from ${sp.lineage.base_task_id}` : "") : "–"));
      }));
  },
  check: (s) => (s.base ? [] : [{ field: "base_task_id", message: "choose the task to retrain" }]),
};

async function fittingDatasets(s) {
  const q = (params) => get(`/v1/datasets?limit=500&${new URLSearchParams(params)}`).then((p) => p.items);
  if (s.flow === "general") return q({ task_type: s.task_type });
  if (s.flow === "specialized") {
    const lists = await Promise.all(s.preset.annotation_types.flatMap((a) =>
      s.preset.modalities.map((m) => q({ annotation_type: a, modality: m }))));
    return lists.flat();
  }
  const ds = s.baseSpec?.dataset;
  return ds ? q({ annotation_type: ds.annotation_type, modality: ds.modality }) : q({});
}

const datasetStep = {
  id: "dataset", title: "Dataset",
  async render(s) {
    const items = await fittingDatasets(s);
    const fit = s.flow === "general" ? `annotation fits ${s.task_type}` : s.flow === "specialized"
      ? `${s.preset.annotation_types.join("/")} on ${s.preset.modalities.join("/")}` : "same annotation and modality as the base task";
    const sel = select([["", items.length ? "— choose a dataset —" : "— no dataset fits —"],
      ...items.map((d) => [d.id, `${d.name} · ${d.num_cases} cases · ${d.classes.join(", ")}`])], s.dataset?.id || "");
    const details = h("div", { class: "dataset-details" });
    const show = async () => {
      s.dataset = items.find((d) => d.id === sel.value) || null;
      details.replaceChildren();
      if (!s.dataset) return;
      details.append(h("p", {}, `${s.dataset.num_cases} cases · ${s.dataset.annotation_type} · ${s.dataset.modality} · classes ${s.dataset.classes.join(", ")}`),
        h("h2", {}, "Health report"), healthReport(s.dataset), h("h2", {}, "Case previews"));
      try { details.append(await previewGrid(s.dataset, { limit: 8 })); } catch (e) { showError(e); }
    };
    sel.addEventListener("change", () => { show(); s.onchange(); });
    await show();
    return h("div", {}, field(`Dataset (${items.length} fit: ${fit})`, sel, { field: "dataset_id" }), details);
  },
  check: (s) => (s.dataset ? [] : [{ field: "dataset_id", message: "choose a dataset" }]),
};

function stepsFor(flow) {
  const second = { general: typeStep, specialized: presetStep, retrain: baseStep }[flow];
  return [flowStep, ...(second ? [second] : []), datasetStep, modelStep, tuningStep, reviewStep];
}

function summary(s) {
  const model = s.flow === "specialized" ? s.preset?.zoo_entry : s.flow === "retrain" ? s.base?.network
    : !s.model ? null : s.model.mode === "auto" ? `auto (${s.model.preference.goal}, ${s.model.preference.target})`
    : `${s.model.network}${s.model.pretrained ? " (pretrained)" : " (from scratch)"}`;
  const tuning = !s.tuning ? null : s.tuning.mode === "auto" ? "auto"
    : `manual: ${Object.entries(s.tuning.hyperparameters).map(([k, v]) => `${k}=${v}`).join(", ") || "defaults"}`;
  const rows = [["Flow", s.flow], ["Task type", s.flow === "general" ? s.task_type : null],
    ["Preset", s.preset?.name], ["Base task", s.base ? `${s.base.name} (${s.base.task_id})` : null],
    ["Dataset", s.dataset ? `${s.dataset.name} (${s.dataset.num_cases} cases)` : null],
    ["Network", model], ["Tuning", tuning], ["Name", s.name || null]];
  return h("aside", { class: "summary", "aria-label": "Summary of your choices" }, h("h2", {}, "Summary"),
    h("dl", {}, rows.filter(([, v]) => v).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
}

export async function wizardView(params) {
  const s = { flow: params.get("flow"), idem: uuid(), step: 0, name: "", description: "",
              reset() { s.task_type = s.preset = s.base = s.dataset = s.model = s.tuning = null; } };
  const root = h("section", { class: "wizard-page" });
  if (s.flow === "retrain" && params.get("base")) {
    try {
      const rec = await get(`/v1/tasks/${encodeURIComponent(params.get("base"))}`);
      s.base = rec; s.baseSpec = await specOf(rec.task_id); s.step = 2;
    } catch (e) { showError(e); }
  }
  s.flows = (await get("/v1/flows")).items;
  const render = async () => {
    const steps = stepsFor(s.flow);
    const step = steps[s.step];
    const form = h("form", { novalidate: true, "aria-labelledby": "step-title" });
    const aside = h("div", {}, summary(s));
    s.onchange = () => aside.replaceChildren(summary(s));
    form.append(h("h2", { id: "step-title", tabindex: -1 }, `Step ${s.step + 1} of ${steps.length}: ${step.title}`));
    try { form.append(await step.render(s, { goto: (id) => { s.step = steps.findIndex((x) => x.id === id); render(); } })); }
    catch (e) { showError(e); form.append(h("p", { class: "bad" }, "This step could not load; go back or retry.")); }
    const back = h("button", { type: "button", disabled: s.step === 0 }, "Back");
    back.addEventListener("click", () => { s.step -= 1; render(); });
    const last = s.step === steps.length - 1;
    form.append(h("div", { class: "actions" }, back,
      h("button", { type: "submit", class: "primary", "data-action": last ? "start" : "next" }, last ? "Start" : "Next")));
    form.addEventListener("change", () => s.onchange());
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      status("");
      const problems = step.check ? await step.check(s, form) : [];
      if (problems.length) {
        const rest = placeErrors(form, problems);
        if (rest.length) status(rest.map((p) => `${p.field}: ${p.message}`).join("; "), "error");
        return;
      }
      if (last) return;
      s.step += 1; render();
    });
    root.replaceChildren(h("h1", {}, "Create new task"),
      h("ol", { class: "steps", "aria-label": "Steps" }, steps.map((x, i) =>
        h("li", { "aria-current": i === s.step ? "step" : undefined }, `${i + 1}. ${x.title}`))),
      h("div", { class: "wizard" }, form, aside));
    form.querySelector("#step-title").focus();
  };
  await render();
  return root;
}

export { request, post };
