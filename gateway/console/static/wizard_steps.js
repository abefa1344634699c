// The wizard's later steps: network, tuning and the review (a dry run, then Start).
import { ApiError, describe, get, post } from "./api.js";
import { searchableZoo, zooEntries } from "./catalog.js";
import { clearErrors, field, fmt, fmtTime, h, kv, placeErrors, select, showError } from "./ui.js";

const MODALITIES = ["CT", "CR", "DX", "MR", "photo", "other"];

// The POST /v1/tasks body the choices so far make.
export function request(s, name) {
  const body = { name: name || s.name || "draft", description: s.description || "", flow: s.flow,
                 dataset_id: s.dataset?.id, tuning: s.tuning || { mode: "auto" } };
  if (s.flow === "general") { body.task_type = s.task_type; body.model = s.model || undefined; }
  if (s.flow === "specialized") body.preset = s.preset?.id;
  if (s.flow === "retrain") body.base_task_id = s.base?.task_id;
  return body;
}

function radios(name, options, value, onPick, label) {
  return h("fieldset", { role: "radiogroup" }, h("legend", {}, label), options.map(([v, text]) => {
    const id = `${name}-${v}`;
    return h("div", {}, h("input", { type: "radio", name, id, value: v, checked: v === value,
                                    onchange: () => onPick(v) }), h("label", { for: id, class: "inline" }, " ", text));
  }));
}

function autoModel(s) {
  const ds = s.dataset || {};
  const rows = ds.stats?.image_sizes?.median_rows;
  return { mode: "auto", data_type: { modality: ds.modality || "other", image_size: Math.round(rows || 224),
                                      channels: 3, num_cases: ds.num_cases || 100 },
           preference: { goal: "balanced", target: "gpu" } };
}

function autoPanel(s) {
  const m = s.model;
  const modality = select(MODALITIES.map((x) => [x, x]), m.data_type.modality);
  const size = h("input", { type: "number", min: 16, max: 4096, value: m.data_type.image_size });
  const cases = h("input", { type: "number", min: 1, value: m.data_type.num_cases });
  const goal = select([["fastest", "fastest"], ["balanced", "balanced"], ["most_accurate", "most accurate"]], m.preference.goal);
  const target = select([["gpu", "a GPU server"], ["cpu", "a CPU"], ["edge", "an edge device"]], m.preference.target);
  const out = h("ol", { class: "reasons", "aria-label": "Suggested networks", "aria-live": "polite" });
  const refresh = async () => {
    Object.assign(m.data_type, { modality: modality.value, image_size: Number(size.value), num_cases: Number(cases.value) });
    Object.assign(m.preference, { goal: goal.value, target: target.value });
    try {
      const res = await post("/v1/zoo/suggest", { task_type: s.task_type, data_type: m.data_type, preference: m.preference, limit: 5 });
      out.replaceChildren(...res.items.map((it, i) => h("li", {}, h("strong", {}, it.entry),
        ` (score ${fmt(it.score, 2)}, ${fmt(it.cost.params_m, 1)} M params, ${fmt(it.cost.gmacs, 2)} GMACs)`,
        i === 0 ? h("em", {}, " — the one auto-select takes") : null, h("div", { class: "muted" }, it.reason))));
    } catch (e) {
      out.replaceChildren(h("li", { class: "bad" }, describe(e)));
      if (e instanceof ApiError) placeErrors(out.parentElement, e.details);
    }
  };
  [modality, size, cases, goal, target].forEach((c) => c.addEventListener("change", refresh));
  refresh();
  return h("div", { class: "auto-model" }, h("div", { class: "row" },
    field("Modality", modality, { field: "model.data_type.modality" }),
    field("Typical image size (px)", size, { field: "model.data_type.image_size" }),
    field("Number of cases", cases, { field: "model.data_type.num_cases" }),
    field("Goal", goal, { field: "model.preference.goal" }),
    field("Where it will run", target, { field: "model.preference.target" })),
    h("h3", {}, "Ranked suggestions"), out);
}

async function manualPanel(s) {
  const [entries, offline] = await Promise.all([zooEntries(), get("/v1/weights/offline").catch(() => ({ items: [] }))]);
  const m = s.model;
  const have = new Set(offline.items);
  let touched = false;
  const pretrained = h("input", { type: "checkbox", id: "pretrained", checked: m.pretrained, "data-field": "model.pretrained",
                                  onchange: (ev) => { m.pretrained = ev.target.checked; touched = true; s.onchange(); } });
  const picked = h("div", { class: "field-error", id: "zoo-pick-err", role: "alert" });
  const holder = h("span", { "data-field": "model.network", id: "zoo-pick", tabindex: -1 });
  return h("div", { class: "manual-model" },
    h("div", {}, pretrained, h("label", { for: "pretrained", class: "inline" }, " Start from pretrained weights")),
    holder, picked,
    searchableZoo(entries.filter((e) => e.task_types.includes(s.task_type)),
      { selected: m.network, offline: have, onPick: (v) => {
        m.network = v.id;
        if (!touched) { m.pretrained = have.has(v.id); pretrained.checked = m.pretrained; }
        s.onchange();
      } }));
}

export const modelStep = {
  id: "model", title: "Network",
  async render(s) {
    if (s.flow === "specialized") {
      return h("div", {}, h("p", {}, "The preset fixes the network and its pretrained weights:"),
        kv([["Network", s.preset.zoo_entry], ["Input", `${s.preset.image_size}px, ${s.preset.channels} channel(s)`]]));
    }
    if (s.flow === "retrain") {
      return h("div", {}, h("p", {}, "A retrain keeps the base task's network and starts from its weights:"),
        kv([["Network", s.baseSpec?.model?.entry_id || s.base.network || "–"], ["Weights", `of task ${s.base.task_id}`]]));
    }
    if (!s.model || (s.model.mode === "auto" && !s.model.data_type)) s.model = autoModel(s);
    const panel = h("div", {});
    const show = async (mode) => {
      s.model = mode === "auto" ? autoModel(s) : { mode: "manual", network: s.lastNetwork || null, pretrained: false };
      panel.replaceChildren(mode === "auto" ? autoPanel(s) : await manualPanel(s));
      s.onchange();
    };
    const choice = radios("model-mode", [["auto", "Auto-select from the data type and a preference"],
      ["manual", "Choose from the model zoo"]], s.model.mode, show, "How to choose the network");
    panel.append(s.model.mode === "auto" ? autoPanel(s) : await manualPanel(s));
    return h("div", {}, choice, panel);
  },
  check(s) {
    if (s.flow === "general" && s.model?.mode === "manual" && !s.model.network) {
      return [{ field: "model.network", message: "pick a network variation from the list" }];
    }
    if (s.model?.mode === "manual") s.lastNetwork = s.model.network;
    return [];
  },
};

let schemaCache = null;

function control(name, prop, value, auto) {
  const p = prop.anyOf ? { ...prop, ...prop.anyOf.find((x) => x.type !== "null") } : prop;
  if (p.enum) return select([...(auto ? [["", "(automatic)"]] : []), ...p.enum.map((v) => [v, v])], value);
  if (p.type === "boolean") return h("input", { type: "checkbox", checked: Boolean(value) });
  const min = p.minimum ?? p.exclusiveMinimum; const max = p.maximum ?? p.exclusiveMaximum;
  return h("input", { type: "number", step: p.type === "integer" ? 1 : "any", min, max, value: value ?? "" });
}

function boundsText(prop) {
  const lo = prop.minimum ?? (prop.exclusiveMinimum !== undefined ? `>${prop.exclusiveMinimum}` : null);
  const hi = prop.maximum ?? prop.exclusiveMaximum;
  return lo !== null && hi !== undefined ? `${lo} … ${hi}` : prop.enum ? prop.enum.join(" | ") : "";
}

function readForm(form, schema) {
  const out = {};
  for (const [name, prop] of Object.entries(schema.properties)) {
    const c = form.querySelector(`[data-field="tuning.hyperparameters.${name}"]`);
    if (!c) continue;
    const v = c.type === "checkbox" ? c.checked : c.value;
    if (v === "" || v === undefined) continue;
    const num = ["integer", "number"].includes(prop.type);
    const val = num ? Number(v) : v;
    if (String(val) !== String(c.dataset.default)) out[name] = val;
  }
  return out;
}

export const tuningStep = {
  id: "tuning", title: "Tuning",
  async render(s) {
    schemaCache = schemaCache || await get("/v1/hyperparameters");
    s.tuning = s.tuning || { mode: "auto" };
    const panel = h("div", {});
    const recipe = s.flow === "specialized" ? s.preset.recipe || {} : {};
    const manual = () => h("fieldset", {}, h("legend", {}, "Hyperparameters (blank: automatic)"), h("div", { class: "hp" },
      Object.entries(schemaCache.properties).map(([name, prop]) => {
        const auto = ["image_size", "loss"].includes(name);
        const dflt = recipe[name] ?? (auto ? "" : prop.default);
        const value = s.tuning.hyperparameters?.[name] ?? dflt;
        const c = control(name, prop, value, auto);
        c.dataset.default = String(dflt);
        return field(prop.title || name, c, { field: `tuning.hyperparameters.${name}`,
          hint: [boundsText(prop), auto ? "blank: from the network / labels" : `default ${dflt}`].filter(Boolean).join(" · ") });
      })));
    const show = (mode) => {
      s.tuning = mode === "auto" ? { mode: "auto" } : { mode: "manual", hyperparameters: s.tuning.hyperparameters || {} };
      panel.replaceChildren(mode === "manual" ? manual() : h("p", {}, s.flow === "general"
        ? "Hyperparameters derived from the dataset size, the task and your network preference."
        : "Hyperparameters derived from the dataset size and the " + (s.flow === "specialized" ? "preset's recipe." : "base task.")));
      s.onchange();
    };
    panel.addEventListener("change", () => { // kept when the user goes Back and returns
      if (s.tuning.mode === "manual") s.tuning.hyperparameters = readForm(panel, schemaCache);
    });
    const choice = radios("tuning-mode", [["auto", "Auto"], ["manual", "Full manual"]], s.tuning.mode, show, "Tuning");
    show(s.tuning.mode);
    return h("div", {}, choice, panel);
  },
  async check(s, form) {
    if (s.tuning.mode !== "manual") return [];
    s.tuning.hyperparameters = readForm(form, schemaCache);
    try {
      const res = await post("/v1/tasks/validate", request(s));
      const mine = (res.errors || []).filter((e) => /hyperparameters|tuning/.test(e.field));
      return mine;
    } catch (e) {
      if (!(e instanceof ApiError)) throw e;
      const mine = e.details.filter((d) => /hyperparameters|tuning/.test(d.field));
      if (!mine.length) showError(e);
      return mine;
    }
  },
};

function specView(res) {
  const sp = res.spec; const est = res.estimate;
  return h("section", { "aria-label": "Resolved training spec" }, h("h3", { class: "ok" }, "The task would be accepted"),
    kv([["Task type", `${sp.task_type} (${sp.label_mode})`], ["Classes", sp.classes.join(", ")],
        ["Network", `${sp.model.entry_id} (${sp.model.pretrained ? "pretrained" : "from scratch"}, ${sp.model.num_classes} outputs, ${sp.model.in_chans} channels)`],
        ["Preprocessing", `${sp.preprocessing.image_size}px, ${sp.preprocessing.channels} channel(s)`
          + (sp.preprocessing.windows.length ? `, windows ${sp.preprocessing.windows.map((w) => w.name).join("/")}` : "")],
        ["Runner pool", `${sp.pool} (${sp.resources.gpus ? `${sp.resources.gpus} GPU(s)` : "one CPU process"})`],
        ["Estimate", est ? `about ${fmtTime(est.seconds)} on pool ${est.pool}; ${est.images_processed} images processed` : "–"],
        ["How", est ? est.basis : ""]]),
    h("details", {}, h("summary", {}, "All hyperparameters"), h("table", {},
      Object.entries(sp.hyperparameters).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, String(v)))))),
    h("h3", {}, "Why"), h("ul", { class: "reasons" }, Object.entries(sp.reasons || {}).map(([k, v]) => h("li", {}, h("strong", {}, k), `: ${v}`))));
}

const STEP_OF = [[/^task_type/, "type"], [/^preset/, "preset"], [/^base_task_id/, "base"], [/^dataset/, "dataset"],
  [/^model/, "model"], [/^tuning|hyperparameters/, "tuning"]];

function rejection(errors, goto) {
  return h("section", { "aria-label": "Rejection reasons" }, h("h3", { class: "bad" }, "The task would be rejected:"),
    h("ul", {}, errors.map((e) => {
      const step = STEP_OF.find(([re]) => re.test(e.field));
      return h("li", {}, h("strong", {}, e.field), `: ${e.message}`, e.code ? h("span", { class: "muted" }, ` (${e.code})`) : "",
        step ? [" ", h("button", { type: "button", onclick: () => goto(step[1]) }, `Fix in step “${step[1]}”`)] : "");
    })));
}

export const reviewStep = {
  id: "review", title: "Review and start",
  async render(s, { goto }) {
    const name = h("input", { type: "text", value: s.name, maxlength: 200, required: true,
                              oninput: (ev) => { s.name = ev.target.value; } });
    const desc = h("textarea", { value: s.description, maxlength: 4000, oninput: (ev) => { s.description = ev.target.value; } });
    const result = h("div", { class: "dry-run", "aria-live": "polite" }, h("p", { class: "muted" }, "Checking with the gateway (a dry run)…"));
    const again = h("button", { type: "button" }, "Check again");
    const run = async () => {
      s.valid = undefined;
      try {
        const res = await post("/v1/tasks/validate", request(s));
        s.valid = res.valid;
        result.replaceChildren(res.valid ? specView(res) : rejection(res.errors, goto));
      } catch (e) {
        s.valid = false;
        const rest = e instanceof ApiError ? placeErrors(result.parentElement, e.details) : [];
        result.replaceChildren(e instanceof ApiError && e.details.length ? rejection(rest.length ? rest : e.details, goto)
          : h("p", { class: "bad" }, describe(e)));
      }
    };
    again.addEventListener("click", run);
    run();
    return h("div", {}, field("Task name", name, { field: "name" }),
      field("Description (optional)", desc, { field: "description" }), again, result);
  },
  async check(s, form) {
    if (!s.name.trim()) return [{ field: "name", message: "give the task a name" }];
    if (s.valid === false) {
      return [{ field: "review", message: "the dry run lists reasons this task would be rejected: fix them first" }];
    }
    clearErrors(form);
    try {
      const accepted = await post("/v1/tasks", request(s, s.name.trim()), { extraHeaders: { "Idempotency-Key": `console-${s.idem}` } });
      location.hash = `#/tasks/${accepted.task_id}`;
      return [];
    } catch (e) {
      if (e instanceof ApiError && e.details.length) return e.details;
      showError(e);
      return [];
    }
  },
};
