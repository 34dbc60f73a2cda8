// Live text probe: as you type, fetch the page's JSON twin and redraw the two neuron lists.
// Progressive enhancement only: without it the form submits and the server renders the same lists.
document.addEventListener("DOMContentLoaded", () => {
  const form = document.querySelector("form.probe-form[data-live]");
  const out = document.getElementById("probe-results");
  if (!form || !out) return;
  let timer = null;
  let latest = 0;

  function card(m) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = m.url;
    if (m.thumb) {
      const img = document.createElement("img");
      Object.assign(img, { src: m.thumb, alt: "feature visualization of " + m.key, width: 96, height: 96 });
      a.append(img);
    } else {
      const none = document.createElement("span");
      none.className = "nothumb";
      none.setAttribute("aria-hidden", "true");
      none.textContent = m.unit;
      a.append(none);
    }
    const parts = [["unit", m.key], ["num", "attribution " + (m.score >= 0 ? "+" : "") + m.score.toPrecision(4)]];
    if (m.label) parts.push(["label" + (m.label_auto ? " auto" : ""), m.label + (m.label_auto ? " (suggested)" : "")]);
    for (const [cls, text] of parts) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      a.append(span);
    }
    li.append(a);
    return li;
  }

  function section(title, cards) {
    const sec = document.createElement("section");
    sec.className = "section";
    const h2 = document.createElement("h2");
    h2.textContent = title;
    const ol = document.createElement("ol");
    ol.className = "grid probe-cards";
    ol.append(...cards.map(card));
    sec.append(h2, ol);
    return sec;
  }

  function status(text) {
    const p = document.createElement("p");
    p.className = "muted probe-status";
    p.textContent = text;
    return p;
  }

  async function run() {
    const params = new URLSearchParams(new FormData(form));
    if (!params.get("q").trim()) return;
    const ticket = ++latest;
    const page = form.getAttribute("action") + "?" + params;
    let data;
    try {
      const resp = await fetch(form.dataset.live + "?" + params, { headers: { Accept: "application/json" } });
      data = await resp.json();
      if (!resp.ok) {
        if (ticket === latest) out.replaceChildren(status(data.error || "The probe failed."));
        return;
      }
    } catch (e) {
      return;  // offline or aborted: the submit button still works
    }
    if (ticket !== latest) return;  // a newer keystroke already asked
    history.replaceState(null, "", page);
    out.replaceChildren(status(data.model + " · " + data.layer + (data.method ? " · read-out: " + data.method : "")),
      section("Most positive", data.positive), section("Most negative", data.negative));
  }

  form.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(run, 250);
  });
});
