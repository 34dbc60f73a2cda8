// Progressive enhancement only: every page works without it.
document.addEventListener("DOMContentLoaded", () => {
  for (const btn of document.querySelectorAll(".copy-link")) {
    btn.addEventListener("click", async () => {
      const url = btn.dataset.url || location.href;
      const status = btn.parentElement.querySelector(".copied");
      try {
        await navigator.clipboard.writeText(url);
        if (status) status.textContent = "Link copied";
      } catch (e) {
        if (status) status.textContent = url;
      }
      btn.dataset.copied = url;
    });
  }
  for (const btn of document.querySelectorAll(".toggle-heatmaps")) {
    btn.addEventListener("click", () => {
      const on = document.body.classList.toggle("show-heat");
      btn.setAttribute("aria-pressed", String(on));
      btn.textContent = on ? "Hide activation heatmaps" : "Show activation heatmaps";
    });
  }
});
