// kyc-worker operator console: the page works without this file; it only prevents a
// second submission of an action while the first is on its way.
"use strict";
document.addEventListener("submit", function (event) {
  var form = event.target;
  if (form.method.toLowerCase() !== "post") { return; }
  window.setTimeout(function () {
    form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
  }, 0);
});
