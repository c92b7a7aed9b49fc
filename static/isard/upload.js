// Upload a large ISO in chunks with a progress bar; resume after a dropped connection.
"use strict";
(() => {
  const CHUNK = 8 * 1024 * 1024;
  const form = document.getElementById("upload");
  const box = document.getElementById("upload-progress");
  const bar = document.getElementById("upload-bar");
  const detail = box.querySelector("[data-role=detail]");
  const pause = document.getElementById("upload-cancel");
  const csrf = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  let paused = false;

  const post = (url, body, type) => fetch(url, {
    method: "POST", body, credentials: "same-origin",
    headers: Object.assign({ "X-CSRFToken": csrf, Accept: "application/json" },
                           type ? { "Content-Type": type } : {}),
  });
  const mib = (bytes) => (bytes / 1024 / 1024).toFixed(1) + " MiB";

  async function send(file, state) {
    let offset = state.offset;
    let failures = 0;
    const started = performance.now();
    while (offset < file.size) {
      if (paused) { detail.textContent = `Paused at ${mib(offset)}; press Upload to go on.`; return; }
      try {
        const response = await post(`${state.chunk_url}?offset=${offset}`,
                                     file.slice(offset, offset + CHUNK), "application/octet-stream");
        const body = await response.json();
        if (!response.ok && !(body.extra && "offset" in body.extra)) throw new Error(body.message);
        offset = response.ok ? body.offset : body.extra.offset; // the server says where to go on
        failures = 0;
      } catch (error) {
        if (++failures > 5) { detail.textContent = "The upload stopped: " + error.message; return; }
        detail.textContent = `Connection lost; retrying (${failures}/5)…`;
        await new Promise((done) => setTimeout(done, 1000 * failures));
        const probe = await fetch(state.chunk_url, { credentials: "same-origin" }).catch(() => null);
        if (probe && probe.ok) offset = (await probe.json()).offset;
        continue;
      }
      bar.value = Math.floor((offset * 100) / file.size);
      const seconds = (performance.now() - started) / 1000;
      detail.textContent = `${mib(offset)} of ${mib(file.size)}` +
        (seconds > 1 ? `, ${mib((offset - state.offset) / seconds)}/s` : "");
    }
    detail.textContent = "Checking the file…";
    const finished = await post(state.finish_url);
    const body = await finished.json();
    detail.textContent = finished.ok ? `${body.name}: ${body.status_label}. Reloading…` : body.message;
    if (finished.ok) setTimeout(() => location.reload(), 1500);
  }

  let current = null;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = form.querySelector("input[type=file]").files[0];
    if (!file) return;
    paused = false;
    pause.hidden = false;
    box.hidden = false;
    box.querySelector("[data-role=name]").textContent = file.name;
    if (!current || current.file !== file) {
      const data = new FormData();
      data.append("name", form.querySelector("[name=name]").value || file.name);
      data.append("kind", form.querySelector("[name=kind]").value);
      data.append("size", String(file.size));
      const response = await post(form.action, data);
      const body = await response.json();
      if (!response.ok) { detail.textContent = body.message; return; }
      current = { file, state: body };
    } else {
      const probe = await fetch(current.state.chunk_url, { credentials: "same-origin" });
      current.state = await probe.json();
    }
    await send(file, current.state);
    pause.hidden = true;
  });
  pause.addEventListener("click", () => { paused = true; });
})();
