// runner dashboard: live refresh and a few conveniences. Our own code, no library; every page
// works without it (forms post, links page, the SVG charts are drawn by the server).
(function () {
  "use strict";
  var body = document.body;
  var every = Math.max(1, parseFloat(body.getAttribute("data-refresh")) || 5) * 1000;
  var button = document.getElementById("live");
  var live = localStorage.getItem("runner.live") !== "off";

  function busy() {
    // Never replace the page under a person's hands: a ticked box, a focused field, a selection,
    // an open traceback.
    if (document.querySelector("main input[type=checkbox]:checked, main details[open]")) return true;
    var active = document.activeElement;
    if (active && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName) && active.closest("main")) return true;
    var selection = window.getSelection && window.getSelection();
    return !!(selection && String(selection).length);
  }

  function refresh() {
    if (!live || document.hidden || busy()) return;
    fetch(location.href, { headers: { "X-Runner-Refresh": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html || busy()) return;
        var next = new DOMParser().parseFromString(html, "text/html");
        var main = next.getElementById("main");
        var stamp = next.querySelector("header .stamp");
        if (main) { document.getElementById("main").replaceWith(main); enhance(); }
        if (stamp) document.querySelector("header .stamp").textContent = stamp.textContent;
      })
      .catch(function () { /* the next tick tries again */ });
  }

  function localTimes() {
    document.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) t.title = d.toLocaleString();
    });
  }

  function enhance() {
    localTimes();
    var all = document.getElementById("select-all");
    if (all) {
      all.hidden = false;
      all.addEventListener("change", function () {
        document.querySelectorAll("#jobs input[name=ids]").forEach(function (b) { b.checked = all.checked; });
      });
    }
    var bulk = document.getElementById("bulk");
    if (bulk) bulk.addEventListener("submit", function (e) {
      var scope = bulk.querySelector("select[name=scope]");
      var action = bulk.querySelector("select[name=action]").value;
      if (scope && scope.value === "matching" && !confirm(action + ": " + bulk.getAttribute("data-confirm-matching"))) e.preventDefault();
    });
    document.querySelectorAll("button[data-confirm]").forEach(function (b) {
      b.addEventListener("click", function (e) { if (!confirm(b.getAttribute("data-confirm"))) e.preventDefault(); });
    });
  }

  if (button) {
    button.hidden = false;
    button.setAttribute("aria-pressed", String(live));
    button.addEventListener("click", function () {
      live = !live;
      localStorage.setItem("runner.live", live ? "on" : "off");
      button.setAttribute("aria-pressed", String(live));
      if (live) refresh();
    });
  }
  enhance();
  setInterval(refresh, every);
})();
