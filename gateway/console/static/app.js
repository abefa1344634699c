// The console's entry: sign-in, then a hash router over the views.
import { apiKey, clearApiKey, get, onUnauthorized, setApiKey, describe } from "./api.js";
import { h, field, status } from "./ui.js";
import { tasksView, taskView, stopLive } from "./tasks.js";
import { datasetsView, datasetView, importView } from "./datasets.js";
import { zooView, presetsView } from "./catalog.js";
import { wizardView } from "./wizard.js";

const view = () => document.getElementById("view");
let signingIn = false; // a refused key while signing in is answered next to the field

const ROUTES = [
  [/^#\/tasks\/([^/?]+)$/, (m) => taskView(decodeURIComponent(m[1]))],
  [/^#\/tasks(\?.*)?$/, (m) => tasksView(new URLSearchParams((m[1] || "").slice(1)))],
  [/^#\/new(\?.*)?$/, (m) => wizardView(new URLSearchParams((m[1] || "").slice(1)))],
  [/^#\/datasets\/([^/?]+)$/, (m) => datasetView(decodeURIComponent(m[1]))],
  [/^#\/datasets$/, () => datasetsView()],
  [/^#\/import$/, () => importView()],
  [/^#\/zoo$/, () => zooView()],
  [/^#\/presets$/, () => presetsView()],
];

function signInView(message) {
  const input = h("input", { type: "password", autocomplete: "off", spellcheck: "false",
                             name: "api-key", required: true });
  const form = h("form", { class: "signin", "aria-label": "Sign in" },
    h("h1", {}, "Sign in to radtrain"),
    h("p", {}, "Paste an API key (",
      h("code", {}, "radtrain up"), " prints one; ", h("code", {}, "radtrain keys create"),
      " makes more). It is kept in this browser tab only and sent as a bearer header."),
    field("API key", input, { field: "api_key" }),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Sign in")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    setApiKey(input.value.trim());
    signingIn = true;
    try {
      await get("/v1/tasks?limit=1");
      status("");
      if (!location.hash || location.hash === "#/signin") location.hash = "#/tasks";
      else route();
    } catch (e) {
      clearApiKey();
      const slot = document.getElementById(`${input.id}-err`);
      slot.textContent = describe(e);
      input.setAttribute("aria-invalid", "true");
      input.focus();
    } finally { signingIn = false; }
  });
  document.getElementById("nav").hidden = true;
  view().replaceChildren(form);
  if (message) status(message, "error");
  input.focus();
}

async function route() {
  stopLive();
  if (!apiKey()) { signInView(); return; }
  document.getElementById("nav").hidden = false;
  const hash = location.hash || "#/tasks";
  const found = ROUTES.find(([re]) => re.test(hash));
  document.querySelectorAll("#nav a").forEach((a) => {
    if (hash.startsWith(a.getAttribute("href"))) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  status("");
  view().replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    const el = found ? await found[1](hash.match(found[0])) : h("p", {}, "No such page.");
    view().replaceChildren(el);
  } catch (e) {
    view().replaceChildren(h("h1", {}, "Something went wrong"), h("p", { class: "bad" }, describe(e)),
      h("p", {}, h("a", { href: "#/tasks" }, "Back to the tasks")));
  }
  const heading = view().querySelector("h1");
  if (heading) { heading.tabIndex = -1; heading.focus(); }
}

onUnauthorized(() => {
  if (signingIn) return;
  clearApiKey();
  signInView("Your API key was refused (missing, invalid or revoked). Sign in again.");
});

document.getElementById("signout").addEventListener("click", () => {
  clearApiKey();
  stopLive();
  signInView();
});
window.addEventListener("hashchange", route);
route();
