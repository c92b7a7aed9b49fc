// Admin lists that follow the fleet (hypervisors' load, storage pools' use): every few
// seconds the table is fetched again and swapped in place, as long as the administrator
// has not selected rows or is not typing, so an action being prepared is never lost.
"use strict";
// Loaded in the page's head (the admin's Media): wait for the table.
document.addEventListener("DOMContentLoaded", () => {
  const SECONDS = 10;
  const table = () => document.querySelector("#result_list");
  if (!document.body.classList.contains("change-list") || !table()) return;
  const busy = () =>
    document.querySelector("#result_list .action-select:checked") ||
    (document.activeElement && document.activeElement.matches("input, select, textarea"));

  async function refresh() {
    if (document.hidden || busy()) return;
    try {
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.querySelector("#result_list tbody");
      const current = table().querySelector("tbody");
      if (fresh && current && !busy()) {
        current.replaceWith(document.adoptNode(fresh));
        table().dataset.refreshedAt = new Date().toISOString();
      }
    } catch (error) {
      // Offline for a moment: the next round tries again.
    }
  }
  setInterval(refresh, SECONDS * 1000);
});
