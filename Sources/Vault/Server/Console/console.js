// Progressive enhancement only: every page works without it. While a rotation runs, the keys page's progress bar
// asks for its numbers every five seconds (same origin, the session's cookie) and reloads the page when the rewrap
// ends or the session does. These polls do not keep an unattended session from idling out.
"use strict";
(function () {
  var bar = document.querySelector("progress[data-poll]");
  if (!bar) return;
  var label = document.getElementById("rewrap-percent");
  function poll() {
    fetch(bar.getAttribute("data-poll"), {
      credentials: "same-origin", headers: { Accept: "application/json", "X-Console-Poll": "1" },
    })
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); return null; }
        return response.ok ? response.json() : null;
      })
      .then(function (progress) {
        if (!progress) return;
        bar.max = progress.max;
        bar.value = progress.value;
        if (label) label.textContent = progress.percent + "%";
        if (progress.running) { setTimeout(poll, 5000); } else { window.location.reload(); }
      })
      .catch(function () { setTimeout(poll, 15000); });
  }
  setTimeout(poll, 5000);
})();
