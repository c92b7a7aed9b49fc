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

  // The file's SHA-256, computed chunk by chunk as they are sent; the server compares it
  // with what it received. Only while the chunks go out in order from the first byte: a
  // resumed or reordered upload sends no hash (the server then records its own).
  function hashFor(state) {
    if (!state.hash && state.offset === 0) state.hash = { sha: new window.IsardSha256(), upTo: 0 };
    return state.hash;
  }

  async function send(file, state) {
    let offset = state.offset;
    let failures = 0;
    const started = performance.now();
    const hash = hashFor(state);
    while (offset < file.size) {
      if (paused) { detail.textContent = `Paused at ${mib(offset)}; press Upload to go on.`; return; }
      try {
        const bytes = new Uint8Array(await file.slice(offset, offset + CHUNK).arrayBuffer());
        const response = await post(`${state.chunk_url}?offset=${offset}`, bytes,
                                     "application/octet-stream");
        const body = await response.json();
        if (!response.ok && !(body.extra && "offset" in body.extra)) throw new Error(body.message);
        const next = response.ok ? body.offset : body.extra.offset; // where the server goes on
        if (hash && hash.upTo === offset && next === offset + bytes.length) {
          hash.sha.update(bytes);
          hash.upTo = next;
        } else if (hash && hash.upTo !== next) {
          state.hash = null;
        }
        offset = next;
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
    const done = new FormData();
    if (state.hash && state.hash.upTo === file.size) done.append("sha256", state.hash.sha.hex());
    const finished = await post(state.finish_url, done);
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
      const hash = current.state.hash;
      current.state = await probe.json();
      // Resumed where the hash had got to: it goes on; anywhere else, it is dropped.
      current.state.hash = hash && hash.upTo === current.state.offset ? hash : null;
    }
    await send(file, current.state);
    pause.hidden = true;
  });
  pause.addEventListener("click", () => { paused = true; });
})();
