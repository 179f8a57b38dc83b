// Refreshes every element marked data-poll from its URL once a second, so
// the page shows sync states, incident numbers and ServiceNow's changes
// without a reload. A fragment equal to the last one is left alone (no
// flicker, no lost selection); a failed fetch (the app restarting) is
// tried again on the next tick.
(function () {
  "use strict";
  var els = document.querySelectorAll("[data-poll]");
  if (!els.length) {
    return;
  }
  var last = new Map();
  function refresh(el) {
    return fetch(el.getAttribute("data-poll"), { cache: "no-store", headers: { Accept: "text/html" } })
      .then(function (r) {
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== last.get(el)) {
          last.set(el, html);
          el.innerHTML = html;
        }
      })
      .catch(function () {});
  }
  function tick() {
    Promise.all(Array.prototype.map.call(els, refresh)).then(function () {
      setTimeout(tick, 1000);
    });
  }
  setTimeout(tick, 1000);
})();
