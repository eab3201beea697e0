// Renders the `html` trait the Python side computes (the same markup as the static repr) and
// mirrors the `dom_data` trait onto the element as data-* attributes (read by browser tests).
// Shipped in the package; loads nothing from the network.
function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "lmnb-view";
  root.dataset.lmnbLive = "1";
  const draw = () => {
    root.innerHTML = model.get("html");
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
