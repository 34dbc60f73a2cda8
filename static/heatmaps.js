// Draws every dataset example's heatmap on its canvas from the stored map (app/heatmaps.py): data-heat is
// the quantized map (base64 uint8, row-major), value = lo + q * (hi - lo) / 255; opacity is the sign's
// part of the map relative to its peak, up to 230 of 255, in the sign's colour (the server's PNG does the same).
(() => {
  const COLOURS = { top: [255, 110, 0], bottom: [0, 110, 255] };
  const PEAK_ALPHA = 230;

  function alphas(canvas) {
    const q = Uint8Array.from(atob(canvas.dataset.heat), (c) => c.charCodeAt(0));
    const lo = Number(canvas.dataset.lo), hi = Number(canvas.dataset.hi);
    const sign = canvas.dataset.sign === "top" ? 1 : -1;
    const part = Array.from(q, (v) => Math.max(0, sign * (lo + (v * (hi - lo)) / 255)));
    const peak = Math.max(0, ...part);
    return part.map((p) => (peak > 0 ? Math.round((p / peak) * PEAK_ALPHA) : 0));
  }

  function draw(canvas) {
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(canvas.width, canvas.height);
    const [r, g, b] = COLOURS[canvas.dataset.sign] || COLOURS.top;
    alphas(canvas).forEach((a, i) => img.data.set([r, g, b, a], i * 4));
    ctx.putImageData(img, 0, 0);
    canvas.dataset.drawn = "1";
  }

  const start = () => document.querySelectorAll("canvas.heat[data-heat]").forEach(draw);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
