// The viewer page (desktops/viewer.html): noVNC, single-use tokens, reconnects.
// A file, not inline, so the page runs under the strict Content-Security-Policy.
// `access` is null on a direct link's page while its desktop starts: the page asks the
// token URL until the desktop runs (202 while it is on its way).
const access = JSON.parse(document.getElementById("viewer-access").textContent);
const tokenUrl = document.body.dataset.tokenUrl;
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const statusLine = document.getElementById("status");
const screen = document.getElementById("screen");
// Absent on a view-only page: the proxy drops input from such a viewer anyway.
const viewOnly = Boolean(access && access.view_only);
const WAIT_POLL_MS = 2000;
const ctrlAltDel = document.getElementById("ctrl-alt-del");
const reconnectButton = document.getElementById("reconnect");
const clipboard = document.getElementById("clipboard");
// After a network blip: a new single-use token, then a new connection, backing off.
const RETRY_DELAYS_MS = [500, 1000, 2000, 4000, 8000, 8000, 8000, 8000];
// Close codes from the proxy that a new token cannot fix.
const FINAL_CLOSE_CODES = new Set([4401, 4409]);

let RFB = null;
let rfb = null;
let desktopName = "";
let attempt = 0;
let userClosed = false;
let lastClose = null;

function setState(state, text) {
  document.body.dataset.state = state;
  statusLine.textContent = text;
}

function websocketUrl(path) {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
}

function open(current) {
  lastClose = null;
  setState("connecting", attempt ? `Reconnecting (attempt ${attempt})…` : "Connecting…");
  // The page opens the websocket itself to read the proxy's close code and reason.
  const socket = new WebSocket(websocketUrl(current.path));
  socket.binaryType = "arraybuffer";
  let refusal = "";
  // A refusal arrives as the only text frame, then the close code.
  socket.addEventListener("message", (event) => {
    if (typeof event.data === "string") {
      try { refusal = JSON.parse(event.data).message || ""; } catch (error) { /* not ours */ }
    }
  });
  socket.addEventListener("close", (event) => {
    lastClose = { code: event.code, reason: refusal || event.reason };
  });
  // No password: the proxy signs in to the desktop's screen itself, so the browser
  // never holds it; noVNC meets a server that asks for none.
  // Shared: another viewer (the student, or their teacher looking) stays connected.
  rfb = new RFB(screen, socket, { shared: true });
  rfb.viewOnly = viewOnly;
  rfb.scaleViewport = true;
  rfb.focusOnClick = !viewOnly;
  rfb.addEventListener("desktopname", (event) => {
    desktopName = event.detail.name;
    if (document.body.dataset.state === "connected") {
      setState("connected", `${viewOnly ? "Looking at (view only)" : "Connected to"} ${desktopName}`);
    }
  });
  rfb.addEventListener("connect", () => {
    attempt = 0;
    reconnectButton.hidden = true;
    if (ctrlAltDel) ctrlAltDel.disabled = false;
    const how = viewOnly ? "Looking at (view only)" : "Connected to";
    setState("connected", `${how} ${desktopName || current.name}`);
    if (!viewOnly) rfb.focus();
  });
  rfb.addEventListener("credentialsrequired", () => {
    // Not from our proxy; drop the connection and come back with a new token.
    rfb.disconnect();
  });
  rfb.addEventListener("securityfailure", (event) => {
    setState("failed", `The desktop refused the connection: ${event.detail.reason || "wrong password"}`);
  });
  rfb.addEventListener("clipboard", (event) => { if (clipboard) clipboard.value = event.detail.text; });
  rfb.addEventListener("disconnect", (event) => {
    rfb = null;
    if (ctrlAltDel) ctrlAltDel.disabled = true;
    if (userClosed) return;
    const close = lastClose;
    if (close && FINAL_CLOSE_CODES.has(close.code)) {
      setState("failed", close.reason || "The viewer was refused.");
      reconnectButton.hidden = false;
      return;
    }
    scheduleReconnect(close && close.reason ? close.reason : "The connection was lost.");
  });
}

async function freshAccess() {
  const response = await fetch(tokenUrl, {
    method: "POST",
    headers: { "X-CSRFToken": csrf },
    credentials: "same-origin",
  });
  const body = await response.json().catch(() => ({}));
  if (response.status === 202) {
    const error = new Error(`The desktop is ${(body.status_label || "starting").toLowerCase()}…`);
    error.waiting = true;
    error.final = false;
    throw error;
  }
  if (!response.ok) {
    const error = new Error(body.message || `The server answered ${response.status}.`);
    error.final = response.status < 500;
    throw error;
  }
  return body;
}

function scheduleReconnect(why) {
  if (attempt >= RETRY_DELAYS_MS.length) {
    setState("failed", `${why} Reconnecting failed; try again later.`);
    reconnectButton.hidden = false;
    return;
  }
  const delay = RETRY_DELAYS_MS[attempt];
  attempt += 1;
  setState("disconnected", `${why} Reconnecting in ${Math.ceil(delay / 1000)} s…`);
  setTimeout(reconnect, delay);
}

async function reconnect() {
  try {
    open(await freshAccess());
  } catch (error) {
    if (error.final) {
      setState("failed", error.message);
      reconnectButton.hidden = false;
    } else {
      scheduleReconnect(error.message);
    }
  }
}

if (ctrlAltDel) {
  ctrlAltDel.addEventListener("click", () => { if (rfb) { rfb.sendCtrlAltDel(); rfb.focus(); } });
}
document.getElementById("fullscreen").addEventListener("click", () => {
  if (document.fullscreenElement) {
    document.exitFullscreen();
  } else {
    document.documentElement.requestFullscreen().catch(() => {});
  }
});
if (clipboard) {
  document.getElementById("clipboard-send").addEventListener("click", () => {
    if (rfb) rfb.clipboardPasteFrom(clipboard.value);
  });
}
reconnectButton.addEventListener("click", () => {
  attempt = 0;
  reconnectButton.hidden = true;
  reconnect();
});
window.addEventListener("beforeunload", () => { userClosed = true; if (rfb) rfb.disconnect(); });

async function waitForStart() {
  try {
    open(await freshAccess());
  } catch (error) {
    if (error.waiting) {
      setState("waiting", `${error.message} The viewer opens when it runs.`);
      setTimeout(waitForStart, WAIT_POLL_MS);
    } else if (error.final) {
      setState("failed", error.message);
    } else {
      setState("waiting", `${error.message} Trying again…`);
      setTimeout(waitForStart, WAIT_POLL_MS);
    }
  }
}

import(document.body.dataset.rfbUrl).then((module) => {
  RFB = module.default;
  if (access) {
    open(access);
  } else {
    setTimeout(waitForStart, WAIT_POLL_MS);
  }
}).catch((error) => {
  setState("failed", `The viewer could not load noVNC (${error}).`);
});

// A time limit near its end: the owner's desktops channel says so, and the page shows it
// over the screen (a direct link's guest has no such channel: it is not signed in).
(() => {
  const banner = document.getElementById("time-warning");
  if (!banner || !access || viewOnly || "direct" in document.body.dataset) return;
  const listen = (delay) => {
    const socket = new WebSocket(websocketUrl("/ws/desktops/"));
    socket.addEventListener("message", (event) => {
      let message = null;
      try { message = JSON.parse(event.data); } catch (error) { return; }
      const desktop = message && message.type === "status" ? message.desktop : null;
      if (!desktop || desktop.id !== access.desktop) return;
      if (desktop.warning) {
        banner.textContent = desktop.warning;
        banner.hidden = false;
      } else if (desktop.status !== "started") {
        banner.hidden = true;
      }
    });
    socket.addEventListener("close", () => setTimeout(() => listen(Math.min(delay * 2, 60000)), delay));
  };
  listen(2000);
})();
