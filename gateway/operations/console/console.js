// The console's entry point: sign in and out, the page shown for the URL's #fragment, and the
// forms wired to the pages (pages.js). Loaded as an ES module from index.html: no inline script.

import { ApiError, call, token, Unauthorized } from "./api.js";
import { el } from "./dom.js";
import * as pages from "./pages.js";

const PAGES = ["destinations", "outages", "parked", "message", "report"];
const $ = (id) => document.getElementById(id);

function say(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "";
}

function signOut(reason = "") {
  token.clear();
  destinations.stop();
  $("nav").hidden = true;
  for (const p of PAGES) $(`page-${p}`).hidden = true;
  $("page-login").hidden = false;
  $("login-error").textContent = reason;
  say("");
  $("token").focus();
}

// Errors of any page: a refused token signs out; anything else is said, with the API's detail.
function failed(error) {
  if (error instanceof Unauthorized) signOut(error.message);
  else if (error instanceof ApiError) say(`Error ${error.status}: ${error.message}`, true);
  else say(`Error: ${error.message}`, true);
}

const destinations = new pages.Destinations(failed);

function fillDestinationLists() {
  for (const select of document.querySelectorAll("select.destinations")) {
    const chosen = select.value;
    const options = destinations.ids.map((id) => el("option", { value: id }, id));
    if (select.dataset.any) options.unshift(el("option", { value: "" }, select.dataset.any));
    select.replaceChildren(...options);
    if (chosen) select.value = chosen;
  }
}

function show(page) {
  if (!PAGES.includes(page)) page = "destinations";
  for (const p of PAGES) $(`page-${p}`).hidden = p !== page;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  say("");
  if (page === "destinations") destinations.show();
  else destinations.stop();
  if (page === "outages") pages.showOutages();
  if (page === "report") pages.showReport();
}

async function signedIn() {
  await destinations.load(); // proves the token before anything is shown
  fillDestinationLists();
  $("page-login").hidden = true;
  $("login-error").textContent = "";
  $("nav").hidden = false;
  show(location.hash.slice(1));
}

// A form whose submit runs `action`, saying "working" meanwhile and any error after.
function onSubmit(id, action) {
  $(id).addEventListener("submit", async (event) => {
    event.preventDefault();
    say("Working...");
    try {
      await action(event.currentTarget);
      say("");
    } catch (error) {
      failed(error);
    }
  });
}

function onClick(id, action) {
  $(id).addEventListener("click", async () => {
    try {
      await action();
    } catch (error) {
      failed(error);
    }
  });
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  token.set($("token").value);
  $("token").value = "";
  try {
    await signedIn();
  } catch (error) {
    if (error instanceof Unauthorized) signOut("That token was refused.");
    else signOut(`The admin API did not answer: ${error.message}`);
  }
});

$("logout").addEventListener("click", () => signOut("Signed out."));
window.addEventListener("hashchange", () => {
  if (!token.get()) return;
  show(location.hash.slice(1));
  $("main").focus({ preventScroll: true }); // keyboard and screen reader users start on the new page
});

const replay = new pages.Replay($("parked-form"));
onSubmit("outages-form", pages.loadOutages);
onSubmit("parked-form", pages.listParked);
onSubmit("replay-form", () => replay.preview());
onClick("replay-run", () => replay.run());
onClick("replay-cancel", () => replay.cancel());
for (const type of ["input", "change"]) {
  $("parked-form").addEventListener(type, () => replay.cancel()); // a preview is only good for its filters
}
onSubmit("message-form", pages.lookUp);
onSubmit("report-form", pages.loadReport);
onClick("report-csv", async () => say(`Downloaded ${await pages.downloadCsv($("report-form"))}`));

if (token.get()) signedIn().catch(failed);
else signOut();
