// deployq dashboard: live updates on top of pages that work without it. Served from the
// package under a strict Content-Security-Policy; it talks to this origin only.
(function () {
  "use strict";

  // Pages marked data-refresh re-read themselves and swap in their <main>: the server
  // renders (and escapes) everything, this script never builds markup from data.
  var every = Number(document.body.getAttribute("data-refresh") || "0");
  if (every > 0 && window.fetch && window.DOMParser) {
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) return;
      var active = document.activeElement;
      // Someone is filling in a form (a ref to deploy): leave the page alone.
      if (active && active !== document.body && active.closest && active.closest("#main form")) return;
      busy = true;
      fetch(location.href, { credentials: "same-origin", redirect: "manual", headers: { accept: "text/html" } })
        .then(function (res) {
          if (!res.ok) return undefined;
          return res.text();
        })
        .then(function (text) {
          if (!text) return;
          var next = new DOMParser().parseFromString(text, "text/html").getElementById("main");
          var current = document.getElementById("main");
          if (!next || !current) return;
          // The result of an action is shown once: keep it on screen.
          var flash = current.querySelector(".flash");
          var fresh = document.importNode(next, true);
          if (flash && !fresh.querySelector(".flash")) fresh.insertBefore(flash, fresh.firstChild);
          current.replaceWith(fresh);
        })
        .catch(function () {})
        .then(function () {
          busy = false;
        });
    }, every);
  }

  // A running deploy's log grows in place (server-sent events; the id is the byte offset,
  // so a reconnect resumes where it stopped). Lines are added as text nodes.
  var log = document.getElementById("log");
  var stream = log && log.getAttribute("data-stream");
  if (stream && window.EventSource) {
    var source = new EventSource(stream + "?offset=" + encodeURIComponent(log.getAttribute("data-offset") || "0"));
    source.onmessage = function (event) {
      var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.appendChild(document.createTextNode(event.data + "\n"));
      if (atEnd) log.scrollTop = log.scrollHeight;
    };
    source.addEventListener("end", function () {
      source.close();
      // The deploy is over: show its final steps and outcome.
      location.reload();
    });
  }
})();
