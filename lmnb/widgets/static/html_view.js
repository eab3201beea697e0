// Renders the `html` trait the Python side computes (the same markup as the static repr).
// Shipped in the package; loads nothing from the network.
function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "lmnb-view";
  const draw = () => { root.innerHTML = model.get("html"); };
  draw();
  model.on("change:html", draw);
  el.appendChild(root);
  return () => model.off("change:html", draw);
}
export default { render };
