// kyc-worker operator console. Every page works without this file; it adds:
// - no second submission of an action while the first is on its way;
// - a confirmation before a form marked data-confirm (deleting a dead job);
// - the auto-refresh switch of list pages: while on, the page re-reads itself every 5 s
//   (not while a form field has the focus); the choice is remembered per page;
// - while an operator action is pending on the page, it re-reads itself until the job ran.
"use strict";
(function () {
  var REFRESH_MS = 5000;
  var PENDING_MS = 1500;

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.method.toLowerCase() !== "post") { return; }
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
      return;
    }
    window.setTimeout(function () {
      form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    }, 0);
  });

  function storageKey() { return "kyc-console-refresh:" + window.location.pathname; }

  function remembered() {
    try { return window.localStorage.getItem(storageKey()) === "on"; } catch (e) { return false; }
  }

  function remember(on) {
    try {
      if (on) { window.localStorage.setItem(storageKey(), "on"); }
      else { window.localStorage.removeItem(storageKey()); }
    } catch (e) { /* storage refused: the switch still works for this page view */ }
  }

  function typing() {
    var active = document.activeElement;
    return active && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName) && active.type !== "checkbox";
  }

  // Reloads without the one-off ?notice= of the action that led here.
  function reload() {
    var url = new URL(window.location.href);
    url.searchParams.delete("notice");
    window.location.replace(url.toString());
  }

  document.addEventListener("DOMContentLoaded", function () {
    var toggle = document.getElementById("auto-refresh");
    var timer = null;
    function schedule() {
      if (timer) { window.clearInterval(timer); timer = null; }
      if (toggle && toggle.checked) {
        timer = window.setInterval(function () { if (!typing()) { reload(); } }, REFRESH_MS);
      }
    }
    if (toggle) {
      toggle.checked = remembered();
      toggle.addEventListener("change", function () { remember(toggle.checked); schedule(); });
      schedule();
    }
    if (document.querySelector(".pending")) {
      window.setTimeout(function () { if (!typing()) { reload(); } }, PENDING_MS);
    }
  });
})();
