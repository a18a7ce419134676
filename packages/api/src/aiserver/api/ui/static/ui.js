// Draws each chart from its JSON (the same figures as the table under it). Without this
// script, or without Chart.js, the tables alone carry every figure.
"use strict";
(function () {
  if (typeof Chart === "undefined") return;
  var palette = ["#0b5cad", "#d9480f", "#2b8a3e", "#862e9c", "#f59f00", "#1098ad", "#5c940d",
                 "#c2255c"];
  var OTHER = "(other)";  // the rest of the groups: grey, and no other group is
  var GREY = "#868e96";
  // The first 50 slots: the palette's 8, then 42 hues, from which DISTINCT (below) is picked;
  // a chart of more than 18 labels draws the rest in the hues after them.
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
  // The slots a label's name picks from: 18 colours of which no two look alike, nor like the
  // grey of "(other)" (a colour difference, CIE76 ΔE in CIELAB, of at least 25: that of the
  // palette's two closest colours). Picked once, greedily in slot order, from the first 50
  // slots; tests/ui/test_pages.py checks every pair. Hashing onto many more colours kept a
  // label's colour steadier, but drew near-identical ones side by side (three purples).
  var DISTINCT = [0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 20, 22, 23, 24, 27, 30, 39, 41];
  // Each label's colour in a chart: picked by its name, not by its rank, so that a model keeps
  // its colour from page to page and as its spend moves it up or down, unless a label before it
  // in alphabetical order took it: it then takes the next free one of DISTINCT (and past 18
  // labels, the hues after the first 50 slots). It depends on which labels the chart holds,
  // never on their order.
  function colours(labels) {
    var taken = {}, found = {}, used = 0;
    labels.slice().sort().forEach(function (label) {
      if (label === OTHER) { found[label] = GREY; return; }
      if (Object.prototype.hasOwnProperty.call(found, label)) return;
      var slot;
      if (used < DISTINCT.length) {
        var i = hashOf(label) % DISTINCT.length;
        while (taken[DISTINCT[i]]) i = (i + 1) % DISTINCT.length;
        slot = DISTINCT[i];
      } else {
        slot = PREFERRED;
        while (taken[slot]) slot++;
      }
      taken[slot] = true;
      used++;
      found[label] = slotColour(slot);
    });
    return found;
  }
  window.aiserverChartPalette = DISTINCT.map(slotColour);  // what tests check pair by pair
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
