// Renders the `html` trait the Python side computes (the same markup as the static repr) and
// mirrors the `dom_data` trait onto the element as data-* attributes (read by browser tests).
// A redraw keeps each scrolled box's position (the tree, the trace, the token stream); the
// tree follows its active node (a flashing or locked one) unless the reader scrolled it in
// the last few seconds. Shipped in the package; loads nothing from the network.
const SCROLLERS = ".lmnb-scroll, .lmnb-trace, .lmnb-tokens";
const HANDS_OFF_MS = 4000;

function follow(box) {
  const node = box.querySelector(".lmnb-flash, .lmnb-node-locked");
  if (!node) return;
  const b = box.getBoundingClientRect();
  const n = node.getBoundingClientRect();
  if (n.left < b.left || n.right > b.right) {
    box.scrollLeft += n.left - b.left - b.width / 3;
  }
  if (n.top < b.top || n.bottom > b.bottom) {
    box.scrollTop += n.top - b.top - b.height / 3;
  }
}

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "lmnb-view";
  root.dataset.lmnbLive = "1";
  let touched = 0; // when the reader last scrolled a box by hand
  const draw = () => {
    const kept = [...root.querySelectorAll(SCROLLERS)].map((b) => [b.scrollLeft, b.scrollTop]);
    const bottom = [...root.querySelectorAll(".lmnb-tokens")].map(
      (b) => b.scrollTop + b.clientHeight >= b.scrollHeight - 4);
    root.innerHTML = model.get("html");
    [...root.querySelectorAll(SCROLLERS)].forEach((b, i) => {
      if (kept[i]) [b.scrollLeft, b.scrollTop] = kept[i];
      b.addEventListener("wheel", () => { touched = Date.now(); }, { passive: true });
      b.addEventListener("pointerdown", () => { touched = Date.now(); });
    });
    [...root.querySelectorAll(".lmnb-tokens")].forEach((b, i) => {
      if (bottom[i] !== false) b.scrollTop = b.scrollHeight; // stay at the growing end
    });
    if (Date.now() - touched > HANDS_OFF_MS) {
      root.querySelectorAll(".lmnb-scroll").forEach(follow);
    }
    const data = model.get("dom_data") || {};
    for (const [key, value] of Object.entries(data)) {
      root.setAttribute(`data-${key}`, String(value));
    }
    root.dataset.renders = String(Number(root.dataset.renders || 0) + 1);
  };
  draw();
  model.on("change:html", draw);
  model.on("change:dom_data", draw);
  el.appendChild(root);
  return () => {
    model.off("change:html", draw);
    model.off("change:dom_data", draw);
  };
}
export default { render };
