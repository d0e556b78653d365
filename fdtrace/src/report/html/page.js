// fdtrace report: timeline hover, peaks, and the flame graph's details.
// Reads the JSON in #fdtrace-data; every string from the trace is written
// with textContent, never as HTML.
(function () {
  "use strict";
  var MAX_ROWS = 2000;
  var data = JSON.parse(document.getElementById("fdtrace-data").textContent);
  var procs = {};
  data.procs.forEach(function (p) { procs[p[0]] = p[1]; });

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function processName(pid) {
    return (pid in procs ? procs[pid] : "") + "[" + pid + "]";
  }

  // ---- timelines ----------------------------------------------------
  function nearest(ts, t) {
    var lo = 0, hi = ts.length - 1;
    if (hi < 0) return -1;
    while (lo < hi) {
      var mid = (lo + hi) >> 1;
      if (ts[mid] < t) lo = mid + 1; else hi = mid;
    }
    if (lo > 0 && Math.abs(ts[lo - 1] - t) <= Math.abs(ts[lo] - t)) lo -= 1;
    return lo;
  }

  function timeline(tl) {
    var box = document.querySelector('.timeline[data-pid="' + tl.pid + '"]');
    if (!box) return;
    var peak = 0;
    for (var i = 0; i < tl.open.length; i++) if (tl.open[i] > peak) peak = tl.open[i];
    box.querySelector(".peak").textContent = "peak " + peak;
    var chart = box.querySelector(".chart");
    var svg = chart.querySelector("svg");
    var cursor = chart.querySelector(".cursor");
    var tip = chart.querySelector(".tip");
    var d = chart.dataset;
    var px0 = +d.px0, px1 = +d.px1, py0 = +d.py0, py1 = +d.py1;
    var t0 = +d.t0, t1 = +d.t1, width = +d.width;
    function hide() { cursor.hidden = true; tip.hidden = true; }
    chart.addEventListener("mouseleave", hide);
    chart.addEventListener("mousemove", function (ev) {
      var r = svg.getBoundingClientRect();
      var scale = r.width / width;
      var px = (ev.clientX - r.left) / scale;
      if (px < px0 || px > px1 || tl.t.length === 0) { hide(); return; }
      var t = t0 + (px - px0) / (px1 - px0) * (t1 - t0);
      var i = nearest(tl.t, t);
      var x = (px0 + (tl.t[i] - t0) / (t1 - t0) * (px1 - px0)) * scale;
      cursor.style.left = x + "px";
      cursor.style.top = py0 * scale + "px";
      cursor.style.height = (py1 - py0) * scale + "px";
      cursor.hidden = false;
      tip.textContent = "";
      tip.appendChild(el("div", tl.t[i].toFixed(1) + " ms: " + tl.open[i] + " open", "t"));
      var covered = 0;
      tl.stacks.forEach(function (label, k) {
        var n = tl.by_stack[i][k] || 0;
        covered += n;
        tip.appendChild(el("div", n + "  " + label));
      });
      if (tl.stacks.length) tip.appendChild(el("div", Math.max(0, tl.open[i] - covered) + "  other"));
      var slack = (t1 - t0) * 4 / Math.max(1, px1 - px0);
      tl.marks.forEach(function (m) {
        if (Math.abs(m.t - t) <= slack) tip.appendChild(el("div", m.t.toFixed(1) + " ms: " + m.label, m.kind));
      });
      tip.hidden = false;
      var left = x + 12;
      if (left + tip.offsetWidth > r.width) left = Math.max(0, x - 12 - tip.offsetWidth);
      tip.style.left = left + "px";
    });
  }
  data.timelines.forEach(timeline);

  // ---- flame graph --------------------------------------------------
  function flame(data) {
    var svg = document.querySelector("#flame svg");
    var details = document.getElementById("flame-details");
    if (!svg || !details || !data) return;
    var names = data.names, paths = data.paths;
    // Where each path's samples start, in inferno's layout order.
    var offsets = [], total = 0;
    paths.forEach(function (p) { offsets.push(total); total += p.count; });
    var frames = Array.prototype.slice.call(svg.querySelectorAll("g.frame"));
    var ys = [];
    frames.forEach(function (g) {
      var y = +g.querySelector("rect").getAttribute("y");
      if (ys.indexOf(y) < 0) ys.push(y);
    });
    ys.sort(function (a, b) { return a - b; });
    var info = svg.querySelector("#details");
    frames.forEach(function (g) {
      var rect = g.querySelector("rect");
      g.dataset.depth = ys.indexOf(+rect.getAttribute("y"));
      g.addEventListener("click", function () { show(g); });
      g.addEventListener("mouseenter", function () {
        if (info) info.textContent = g.querySelector("title").textContent;
      });
    });

    function show(g) {
      frames.forEach(function (f) { f.classList.remove("selected"); });
      g.classList.add("selected");
      var rect = g.querySelector("rect");
      var x = +rect.getAttribute("fg:x"), w = +rect.getAttribute("fg:w");
      var depth = +g.dataset.depth;
      var first = -1, rows = [], count = 0;
      for (var i = 0; i < paths.length; i++) {
        if (offsets[i] < x || offsets[i] >= x + w) continue;
        if (first < 0) first = i;
        count += paths[i].count;
        var pr = paths[i].rows;
        for (var k = 0; k < pr.length && rows.length < MAX_ROWS; k++) rows.push(pr[k]);
      }
      details.textContent = "";
      var path = first < 0 || depth === 0 ? ["all"] :
        paths[first].frames.slice(0, depth).map(function (n) { return names[n]; });
      details.appendChild(el("h3", count + " descriptor" + (count === 1 ? "" : "s") + " opened through " + path[path.length - 1]));
      details.appendChild(el("p", path.join(" \u2192 "), "path"));
      var table = el("table");
      var head = el("tr");
      ["fd", "kind", "target", "age (ms)", "process"].forEach(function (h) { head.appendChild(el("th", h)); });
      table.appendChild(el("thead")).appendChild(head);
      var body = el("tbody");
      rows.forEach(function (r) {
        var tr = el("tr");
        tr.appendChild(el("td", r[1], "num"));
        tr.appendChild(el("td", r[2]));
        tr.appendChild(el("td", r[3], "target"));
        tr.appendChild(el("td", r[4], "num"));
        tr.appendChild(el("td", processName(r[0])));
        body.appendChild(tr);
      });
      table.appendChild(body);
      details.appendChild(table);
      if (count > rows.length) details.appendChild(el("p", "\u2026 and " + (count - rows.length) + " more", "more"));
    }
  }
  flame(data.flame);

  document.body.dataset.ready = "1";
  // How long the page took to become usable, for the benchmark.
  document.body.dataset.readyMs = String(Math.round(performance.now()));
})();
