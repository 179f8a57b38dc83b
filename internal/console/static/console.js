// nowbridge console: the overview refreshes itself, and forms that ask
// for it are confirmed. Every page works without this script.
"use strict";
(function () {
  const live = document.querySelector("[data-refresh]");
  if (live) {
    const url = live.getAttribute("data-refresh");
    const tick = async () => {
      if (document.hidden) return;
      try {
        const res = await fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } });
        if (res.ok) live.innerHTML = await res.text(); // server-rendered, escaped by html/template
      } catch (e) { /* the next tick tries again */ }
    };
    setInterval(tick, 5000);
  }
  document.querySelectorAll("form[data-confirm]").forEach((f) => {
    f.addEventListener("submit", (ev) => {
      if (!window.confirm(f.getAttribute("data-confirm"))) ev.preventDefault();
    });
  });
})();
