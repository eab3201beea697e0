// Renders the `html` trait the Python side computes (the same markup as the static repr) and
// mirrors the `dom_data` trait onto the element as data-* attributes (read by browser tests).
// A redraw keeps each scrolled box's position (the tree, the trace, the token stream); the
// tree follows its active node (a flashing or locked one) unless the reader scrolled it in
// the last few seconds. A token stream's box is a reversed flex column: it opens at its end
// and stays there as text comes (scrollTop 0 is the end, earlier text is negative), unless
// the reader scrolled up: then the same text stays in view while more is appended below.
// Shipped in the package; loads nothing from the network.
const SCROLLERS = ".lmnb-scroll, .lmnb-trace, .lmnb-tokens";
const HANDS_OFF_MS = 4000;

// where a box is scrolled: [left, top]; a token box's top counted from its first line, or
// null when it shows its end (then a redraw shows the new end)
function position(b) {
  if (!b.classList.contains("lmnb-tokens")) return [b.scrollLeft, b.scrollTop];
  return Math.abs(b.scrollTop) < 4 ? null : [0, b.scrollHeight - b.clientHeight + b.scrollTop];
}

function restore(b, kept) {
  if (kept === null) return; // a fresh token box opens at its end
  if (b.classList.contains("lmnb-tokens")) {
    b.scrollTop = kept[1] - (b.scrollHeight - b.clientHeight);
  } else {
    [b.scrollLeft, b.scrollTop] = kept;
  }
}

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
    const kept = [...root.querySelectorAll(SCROLLERS)].map(position);
    root.innerHTML = model.get("html");
    [...root.querySelectorAll(SCROLLERS)].forEach((b, i) => {
      if (kept[i] !== undefined) restore(b, kept[i]);
      b.addEventListener("wheel", () => { touched = Date.now(); }, { passive: true });
      b.addEventListener("pointerdown", () => { touched = Date.now(); });
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
