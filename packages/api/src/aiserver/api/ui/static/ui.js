// Draws each chart from its JSON (the same figures as the table under it). Without this
// script, or without Chart.js, the tables alone carry every figure.
"use strict";
(function () {
  if (typeof Chart === "undefined") return;
  var palette = ["#0b5cad", "#d9480f", "#2b8a3e", "#862e9c", "#f59f00", "#1098ad", "#5c940d",
                 "#c2255c"];
  var OTHER = "(other)";  // the rest of the groups: grey, and no other group is
  var GREY = "#868e96";
  // the colours a label's name picks from: the palette's 8, then 42 hues. Many, so that two
  // labels of a chart seldom pick the same one (with 16, a model entering a top 8 moved
  // another's colour about one time in five)
  var PREFERRED = 50;
  // The colour of a slot: the palette's first, then hues spread by the golden angle, so that a
  // chart of many groups (up to the API's 1,000) has enough of them. 21 golden angles come
  // back within 8 degrees: each run of 21 slots has a lightness of its own, so that the two
  // nearest hues of the preferred slots never look alike.
  function slotColour(slot) {
    if (slot < palette.length) return palette[slot];
    var hue = ((slot * 137.508) % 360).toFixed(1);
    return "hsl(" + hue + ", 65%, " + [38, 52, 30][Math.floor(slot / 21) % 3] + "%)";
  }
  function hashOf(label) {  // FNV-1a: the same number for a name on every page and every day
    var h = 2166136261;
    for (var k = 0; k < label.length; k++) {
      h ^= label.charCodeAt(k);
      h = Math.imul(h, 16777619) >>> 0;
    }
    return h;
  }
  // A slot's colour in CIELAB, where the distance between two colours is about how different
  // they look (CIE76 ΔE), worked out once per slot.
  var labs = {};
  function rgbOfSlot(slot) {
    if (slot < palette.length) {
      return [1, 3, 5].map(function (i) { return parseInt(palette[slot].substr(i, 2), 16) / 255; });
    }
    return hslRgb(parseFloat(((slot * 137.508) % 360).toFixed(1)), 0.65,
                  [38, 52, 30][Math.floor(slot / 21) % 3] / 100);
  }
  function hslRgb(hue, s, l) {
    var a = s * Math.min(l, 1 - l);
    function f(n) { var k = (n + hue / 30) % 12; return l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1)); }
    return [f(0), f(8), f(4)];
  }
  function lab(rgb) {
    var c = rgb.map(function (v) { return v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
    var x = (0.4124 * c[0] + 0.3576 * c[1] + 0.1805 * c[2]) / 0.95047;
    var y = 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
    var z = (0.0193 * c[0] + 0.1192 * c[1] + 0.9505 * c[2]) / 1.08883;
    function f(t) { return t > 216 / 24389 ? Math.cbrt(t) : (24389 / 27 * t + 16) / 116; }
    return [116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))];
  }
  function labOfSlot(slot) {
    if (!Object.prototype.hasOwnProperty.call(labs, slot)) labs[slot] = lab(rgbOfSlot(slot));
    return labs[slot];
  }
  function nearest(colour, drawn) {  // the least ΔE between `colour` and the colours drawn
    return drawn.reduce(function (least, other) {
      return Math.min(least, Math.hypot(colour[0] - other[0], colour[1] - other[1], colour[2] - other[2]));
    }, Infinity);
  }
  // How far apart (ΔE) any two colours of a chart are, where its labels allow: the palette's two
  // closest colours. Up to 15 labels it always holds; past 18 no 50 colours can hold it.
  var DISTINCT = 25;
  var GREY_LAB = lab([0x86 / 255, 0x8e / 255, 0x96 / 255]);
  // Each label's colour in a chart: picked by its name, not by its rank, so that a model keeps
  // its colour from page to page and as its spend moves it up or down, unless a label before it
  // in alphabetical order took a colour that looks like it (ΔE under DISTINCT): it then takes
  // the next colour that looks like none taken (or, past what the colours allow, the one that
  // looks least like them). It depends on which labels the chart holds, never on their order.
  function colours(labels) {
    var taken = {}, drawn = [GREY_LAB], found = {};
    labels.slice().sort().forEach(function (label) {
      if (label === OTHER) { found[label] = GREY; return; }
      if (Object.prototype.hasOwnProperty.call(found, label)) return;
      var start = hashOf(label) % PREFERRED, slot = -1, widest = -1;
      for (var i = 0; i < PREFERRED; i++) {
        var candidate = (start + i) % PREFERRED;
        if (taken[candidate]) continue;
        var gap = nearest(labOfSlot(candidate), drawn);
        if (gap >= DISTINCT) { slot = candidate; break; }
        if (gap > widest) { slot = candidate; widest = gap; }
      }
      if (slot < 0) {  // every preferred colour is taken: the hues after them
        slot = PREFERRED;
        while (taken[slot]) slot++;
      }
      taken[slot] = true;
      drawn.push(labOfSlot(slot));
      found[label] = slotColour(slot);
    });
    return found;
  }
  window.aiserverChartColours = colours;  // what a chart of these labels draws them in
  document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
    var source = document.getElementById(canvas.getAttribute("data-chart"));
    if (!source) return;
    var data = JSON.parse(source.textContent);
    var step = data.kind === "step";  // a price over time; otherwise bars stacked per bucket
    var drawn = colours(data.series.map(function (s) { return s.label; }));
    new Chart(canvas, {
      type: step ? "line" : "bar",
      data: {
        labels: data.labels,
        datasets: data.series.map(function (s) {
          return {
            label: s.label,
            // drawn as numbers; the tooltip shows the exact decimal string. A null (a price
            // version without that price) stays null: a gap in the line, not a 0
            data: s.values.map(function (v) { return v === null ? null : Number(v); }),
            exact: s.values,
            backgroundColor: drawn[s.label],
            borderColor: drawn[s.label],
            stepped: step,
          };
        }),
      },
      options: {
        maintainAspectRatio: false,
        animation: false,
        scales: { x: { stacked: !step }, y: { stacked: !step, title: { display: true, text: data.currency } } },
        plugins: {
          tooltip: {
            callbacks: {
              label: function (item) {
                return item.dataset.label + ": " + item.dataset.exact[item.dataIndex] + " " + data.currency;
              },
            },
          },
        },
      },
    });
  });
})();
