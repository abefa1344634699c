// The catalog: model zoo (grouped by network, expandable, searchable) and presets.
import { get } from "./api.js";
import { field, fmt, h, kv, select } from "./ui.js";

let zooCache = null;
export async function zooEntries() {
  if (!zooCache) zooCache = (await get("/v1/zoo?limit=500")).items;
  return zooCache;
}

function weightsNote(e) {
  return e.pretrained_on === "none" || !e.weights_tag ? "no pretrained weights"
    : `${e.pretrained_on} (${e.licence})`;
}

// Zoo entries grouped by network; each network expands to its pretrained variations.
// With onPick, each variation is a radio button (name "zoo-entry").
export function zooList(entries, { onPick, selected, offline = new Set() } = {}) {
  const byNet = new Map();
  for (const e of entries) {
    if (!byNet.has(e.network)) byNet.set(e.network, []);
    byNet.get(e.network).push(e);
  }
  const list = h("div", { class: "zoo-list" });
  for (const [net, vars] of byNet) {
    const first = vars[0];
    const open = vars.some((v) => v.id === selected);
    list.append(h("details", { class: "net", open, dataset: { network: net } },
      h("summary", {}, `${net}`, h("span", { class: "muted" },
        ` · ${first.family} · ${fmt(first.params_m, 1)} M params · ${fmt(first.gmacs, 2)} GMACs at ${first.input_size}px · ${vars.length} variation(s)`)),
      vars.map((v) => {
        const id = `zoo-${v.id.replace(/[^a-zA-Z0-9_-]/g, "_")}`;
        const weights = offline.has(v.id) ? "weights available offline" : v.weights_tag ? "weights: stage with radtrain zoo mirror" : "";
        return h("div", { class: "variation" },
          onPick ? h("input", { type: "radio", name: "zoo-entry", id, value: v.id, checked: v.id === selected,
                               onchange: () => onPick(v) }) : null,
          h("label", { for: onPick ? id : undefined }, h("code", {}, v.id)),
          h("span", { class: "muted" }, `${v.task_types.join("/")} · ${weightsNote(v)} · ${v.speed} · ${weights}`));
      })));
  }
  if (!entries.length) list.append(h("p", {}, "No network matches."));
  return list;
}

export function searchableZoo(entries, opts = {}) {
  const q = h("input", { type: "search", placeholder: "e.g. resnet, convnext, in22k" });
  const host = h("div", {});
  const render = () => {
    const needle = q.value.trim().toLowerCase();
    const found = entries.filter((e) => !needle || [e.id, e.network, e.family, e.pretrained_on]
      .some((s) => String(s).toLowerCase().includes(needle)));
    const nets = [...new Set(found.map((e) => e.network))];
    const shown = needle || opts.all ? nets : nets.slice(0, 40);
    const keep = new Set(shown);
    host.replaceChildren(h("p", { class: "muted" }, `${found.length} entries on ${nets.length} networks`
      + (shown.length < nets.length ? `; the first ${shown.length} networks are listed, search to find the others` : "")),
      zooList(found.filter((e) => keep.has(e.network)), opts));
  };
  q.addEventListener("input", render);
  render();
  return h("div", {}, field("Search the zoo", q), host);
}

export async function zooView() {
  const [entries, offline] = await Promise.all([zooEntries(),
    get("/v1/weights/offline").catch(() => ({ items: [] }))]);
  const type = select([["", "all task types"], ["classification", "classification"],
                       ["detection", "detection"], ["segmentation", "segmentation"]], "");
  const host = h("div", {});
  const render = () => host.replaceChildren(searchableZoo(
    entries.filter((e) => !type.value || e.task_types.includes(type.value)),
    { offline: new Set(offline.items) }));
  type.addEventListener("change", render);
  render();
  return h("section", {}, h("h1", {}, "Model zoo"),
    h("p", {}, `${entries.length} entries: each network with its pretrained variations.`),
    field("Task type", type), host);
}

export function presetCard(p, { pick, checked } = {}) {
  const id = `preset-${p.id}`;
  return h("div", { class: "card", dataset: { preset: p.id } },
    pick ? h("input", { type: "radio", name: "preset", id, value: p.id, checked, onchange: () => pick(p) }) : null,
    h("h3", {}, pick ? h("label", { for: id }, p.name) : p.name),
    h("p", {}, p.description),
    kv([["Task", `${p.task_type} (${p.label_mode.replace("_", "-")})`],
        ["Image format", `${p.input}; ${p.modalities.join("/")}, ${p.image_size}px, ${p.channels} channel(s)`],
        ["Classes", p.classes.join(", ")],
        ["Network", p.zoo_entry], ["Metrics", p.metrics.join(", ")]]));
}

export async function presetsView() {
  const page = await get("/v1/presets");
  return h("section", {}, h("h1", {}, "Presets"),
    h("p", {}, "A preset pins the network, weights, preprocessing and recipe: about 100 good cases give a useful model."),
    h("div", { class: "cards" }, page.items.map((p) => presetCard(p))));
}
