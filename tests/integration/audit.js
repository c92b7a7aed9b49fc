// A page's accessibility and phone-size problems, for test_classroom.py (run by Selenium).
const problems = [];
const visible = (el) => {
  const box = el.getBoundingClientRect();
  const style = getComputedStyle(el);
  return box.width > 0 && box.height > 0 && style.visibility !== "hidden" && style.display !== "none";
};
const describe = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
  (el.className && typeof el.className === "string" ? "." + el.className.trim().split(/\s+/).join(".") : "") +
  " '" + (el.textContent || el.value || "").trim().slice(0, 40) + "'";
for (const el of document.querySelectorAll("input, select, textarea")) {
  if (el.type === "hidden" || !visible(el)) continue;
  if (!(el.labels && el.labels.length) && !el.getAttribute("aria-label") && !el.getAttribute("aria-labelledby"))
    problems.push("no label: " + describe(el));
}
for (const el of document.querySelectorAll("button, a[href], summary")) {
  if (!visible(el)) continue;
  if (!(el.textContent.trim() || el.getAttribute("aria-label") || el.getAttribute("title")))
    problems.push("no name: " + describe(el));
}
// Focus follows the page's order: no positive tabindex reorders it.
for (const el of document.querySelectorAll("[tabindex]")) {
  if (el.tabIndex > 0) problems.push("tabindex > 0: " + describe(el));
}
const rgba = (text) => (text.match(/[\d.]+/g) || []).map(Number);
const luminance = ([r, g, b]) => {
  const channel = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
};
const background = (el) => {
  for (let node = el; node; node = node.parentElement) {
    const colour = rgba(getComputedStyle(node).backgroundColor);
    if (colour.length === 3 || (colour.length === 4 && colour[3] > 0.5)) return colour.slice(0, 3);
  }
  return [255, 255, 255];
};
const opacityOf = (el) => {
  let opacity = 1;
  for (let node = el; node; node = node.parentElement) opacity *= parseFloat(getComputedStyle(node).opacity);
  return opacity;
};
for (const el of document.querySelectorAll("body *")) {
  if (!visible(el) || el.closest("#screen")) continue;
  const ownText = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
  if (!ownText) continue;
  const style = getComputedStyle(el);
  const back = background(el);
  const colour = rgba(style.color);
  // What the eye gets: the text's colour blended over its background by every opacity.
  const alpha = (colour.length === 4 ? colour[3] : 1) * opacityOf(el);
  const seen = colour.slice(0, 3).map((value, i) => alpha * value + (1 - alpha) * back[i]);
  const fg = luminance(seen), bg = luminance(back);
  const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
  const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight, 10) >= 700;
  const needed = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
  if (ratio < needed) problems.push(`contrast ${ratio.toFixed(2)} < ${needed}: ` + describe(el));
}
// The "visually hidden" pattern (for screen readers only): clipped to nothing on purpose.
const clippedAway = (el) => {
  for (let node = el; node; node = node.parentElement) {
    if (getComputedStyle(node).clip === "rect(0px, 0px, 0px, 0px)") return true;
  }
  return false;
};
const width = document.documentElement.clientWidth;
for (const el of document.querySelectorAll("body *")) {
  if (!visible(el) || el.closest("#screen")) continue;
  const box = el.getBoundingClientRect();
  if (box.right > width + 1 || box.left < -1) {
    if (!el.closest(".skip") && !clippedAway(el)) problems.push("cut off: " + describe(el));
  }
}
return problems;
