// fdtrace report: collect every error the page raises into
// <html data-errors>, one per line, so a headless browser can report them.
(function () {
  "use strict";
  var root = document.documentElement;
  function note(message) {
    var prev = root.getAttribute("data-errors");
    root.setAttribute("data-errors", (prev ? prev + "\n" : "") + String(message));
  }
  window.onerror = function (message, source, line, column) {
    note("error: " + message + " (line " + line + ":" + column + ")");
  };
  // A resource that failed to load (there should be none to load at all).
  window.addEventListener("error", function (e) {
    if (e.target && e.target !== window && e.target.tagName) {
      note("failed to load: <" + e.target.tagName.toLowerCase() + ">");
    }
  }, true);
  window.addEventListener("unhandledrejection", function (e) {
    var r = e.reason;
    note("unhandled rejection: " + (r && r.stack ? r.stack : r));
  });
  document.addEventListener("securitypolicyviolation", function (e) {
    note("blocked by the page's policy: " + e.violatedDirective + " " + e.blockedURI);
  });
  var original = console.error;
  console.error = function () {
    note("console.error: " + Array.prototype.map.call(arguments, String).join(" "));
    return original.apply(console, arguments);
  };
})();
