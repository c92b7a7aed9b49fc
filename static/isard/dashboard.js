// The dashboard, live: forms sent with fetch, cards updated from the websocket.
// Without this file the page still works (plain forms and redirects).
"use strict";
(() => {
  const json = (id) => JSON.parse(document.getElementById(id).textContent);
  const actionsByStatus = json("actions-by-status");
  const labels = json("action-labels");
  const working = new Set(json("working-statuses"));
  const notice = document.getElementById("notice");
  const live = document.getElementById("live");
  const cards = document.getElementById("cards");
  // Only a desktop's owner opens its screen; a teacher's view of a student's card lacks them.
  const OWNER_ONLY = new Set(["open", "vv"]);
  // Where a card may offer "Reset to the template" (desktops.views.RESET_STATUSES).
  const RESETTABLE = new Set(["stopped", "failed"]);
  const csrf = () => document.querySelector("input[name=csrfmiddlewaretoken]").value;

  const announcer = document.getElementById("announce");

  // `about` is the desktop a success message is about: it goes away once that desktop
  // moves on, so "is starting" does not linger beside a card that says "Started".
  function say(message, ok, about) {
    notice.textContent = message;
    notice.className = "notice " + (ok ? "ok" : "error");
    notice.dataset.about = ok && about ? String(about) : "";
    notice.hidden = false;
  }

  function button(card, action) {
    if (action === "open" || action === "vv") {
      const link = document.createElement("a");
      link.className = "button" + (action === "open" ? " primary" : "");
      link.href = action === "open" ? card.dataset.viewerUrl : card.dataset.vvUrl;
      if (action === "open") { link.target = "_blank"; link.rel = "noopener"; }
      link.textContent = labels[action];
      return link;
    }
    const form = document.createElement("form");
    form.method = "post";
    form.className = "inline";
    form.action = card.dataset.actionUrl.replace("ACTION", action);
    form.dataset.async = "";
    const submit = document.createElement("button");
    submit.type = "submit";
    if (action === "start") submit.className = "primary";
    submit.textContent = labels[action];
    form.append(submit);
    return form;
  }

  function resetForm(card) {
    const form = document.createElement("form");
    form.method = "post";
    form.className = "inline";
    form.action = card.dataset.actionUrl.replace("ACTION", "reset-to-template");
    form.dataset.async = "";
    form.dataset.role = "reset";
    form.dataset.confirm = `Put “${card.querySelector("h3").textContent}” back to its template? ` +
      "What is on its disk now goes to the recycle bin, from where it can be put back.";
    const submit = document.createElement("button");
    submit.type = "submit";
    submit.textContent = "Reset to the template";
    form.append(submit);
    return form;
  }

  // One fetch at a time: a snapshot naming thirty new desktops asks for one more, not thirty.
  let reloading = null;
  let reloadAgain = false;
  function reloadCards() {
    if (reloading) {
      reloadAgain = true;
      return reloading;
    }
    reloading = (async () => {
      try {
        do {
          reloadAgain = false;
          const response = await fetch("?fragment=cards", { headers: { Accept: "text/html" } });
          if (response.ok) cards.innerHTML = await response.text();
          recount();
        } while (reloadAgain);
      } finally {
        reloading = null;
      }
    })();
    return reloading;
  }

  function update(desktop) {
    const card = document.getElementById("desktop-" + desktop.id);
    const wasDeleted = card && card.dataset.status === "deleted";
    if (!card || wasDeleted !== (desktop.status === "deleted")) {
      reloadCards(); // a new desktop, or one moving in or out of the recycle bin
      return;
    }
    if (desktop.warning) say(desktop.warning, false, desktop.id); // a time limit is near
    if (card.dataset.sessionEnds !== (desktop.session_ends_at || "")) {
      reloadCards(); // a session began, ended or was extended: the server draws it
      return;
    }
    if (card.dataset.status === desktop.status) return;
    const previous = card.dataset.status;
    card.dataset.status = desktop.status;
    card.querySelector("[data-role=status]").textContent = desktop.status_label;
    if (notice.dataset.about === String(desktop.id) && previous && !working.has(desktop.status)) {
      notice.hidden = true;
      notice.dataset.about = "";
    }
    // Screen readers hear the change once, in a polite live region (not every badge).
    if (announcer) {
      const why = desktop.status_reason ? ` ${desktop.status_reason}` : "";
      announcer.textContent = `${card.querySelector("h3").textContent}: ${desktop.status_label}.${why}`;
    }
    // Keyboard focus stays in the card when its buttons are replaced under it.
    const hadFocus = card.contains(document.activeElement) && document.activeElement !== document.body;
    const reason = card.querySelector("[data-role=reason]");
    reason.textContent = desktop.status_reason || "";
    reason.hidden = !desktop.status_reason;
    card.querySelector("[data-role=working]").hidden = !working.has(desktop.status);
    const actions = card.querySelector("[data-role=actions]");
    const allowed = (actionsByStatus[desktop.status] || []).filter(
      (action) => !("foreign" in card.dataset && OWNER_ONLY.has(action)));
    actions.replaceChildren(...allowed.map((a) => button(card, a)));
    if ("reset" in card.dataset && previous === "resetting") {
      reloadCards(); // a reset or put-back finished: the server draws the earlier disks
      return;
    }
    if ("reset" in card.dataset && RESETTABLE.has(desktop.status)) actions.append(resetForm(card));
    if (desktop.status === "stopped" && card.dataset.templateUrl) {
      const link = document.createElement("a");
      link.className = "button";
      link.href = card.dataset.templateUrl;
      link.textContent = "Make a template";
      actions.append(link);
    }
    const onHeading = document.activeElement === card.querySelector("h3");
    if (hadFocus && (onHeading || !card.contains(document.activeElement))) focusInto(card);
    recount();
  }

  // The course page's deployments say how many of their desktops exist and run.
  function recount() {
    for (const deployment of document.querySelectorAll(".deployment[data-deployment]")) {
      const mine = [...cards.querySelectorAll(`.card[data-deployment="${deployment.dataset.deployment}"]`)]
        .filter((card) => card.dataset.status !== "deleted");
      const running = mine.filter((card) => card.dataset.status === "started").length;
      const counts = deployment.querySelector("[data-role=counts]");
      if (counts) counts.textContent = `${mine.length} desktop${mine.length === 1 ? "" : "s"}, ${running} running`;
    }
  }

  function focusInto(card) {
    const first = card.querySelector("[data-role=actions] a, [data-role=actions] button");
    const heading = card.querySelector("h3");
    if (!first) heading.tabIndex = -1;
    (first || heading).focus();
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !("async" in form.dataset)) return;
    event.preventDefault();
    const data = new FormData(form);
    const card = form.closest(".card");
    if (!data.has("csrfmiddlewaretoken")) data.append("csrfmiddlewaretoken", csrf());
    for (const control of form.querySelectorAll("button")) control.disabled = true;
    try {
      const response = await fetch(form.action, {
        method: "POST", body: data, headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      const body = await response.json().catch(() => ({ message: "The server did not answer." }));
      say(body.message, response.ok, body.desktop && body.desktop.id);
      if (body.desktop) update(body.desktop);
      // The pressed button may be gone (or was blurred when disabled): stay in the card.
      const lost = !document.activeElement || document.activeElement === document.body;
      if (card && card.isConnected && lost) focusInto(card);
      if (response.ok && form.closest(".new-desktop")) form.reset();
      if (response.ok && "reload" in form.dataset) reloadCards();
    } catch (error) {
      say("The platform cannot be reached; check your connection and try again.", false);
    } finally {
      for (const control of form.querySelectorAll("button")) control.disabled = false;
    }
  });

  let delay = 500;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const path = cards.dataset.socket || "/ws/desktops/";
    const socket = new WebSocket(`${scheme}://${location.host}${path}`);
    socket.onopen = () => {
      delay = 500;
      live.dataset.state = "live";
      live.textContent = "Live: statuses update by themselves.";
    };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "snapshot") message.desktops.forEach(update);
      else if (message.type === "status") update(message.desktop);
    };
    socket.onclose = () => {
      live.dataset.state = "offline";
      live.textContent = "Reconnecting for live status…";
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  }
  connect();
})();
// Destructive buttons ask first (plain forms carry data-confirm).
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
    event.stopImmediatePropagation();
  }
}, true);
