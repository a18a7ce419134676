// Draws each chart from its JSON (the same figures as the table under it). Without this
// script, or without Chart.js, the tables alone carry every figure.
"use strict";
(function () {
  if (typeof Chart === "undefined") return;
  var palette = ["#0b5cad", "#d9480f", "#2b8a3e", "#862e9c", "#f59f00", "#1098ad", "#5c940d",
                 "#c2255c"];
  var OTHER = "(other)";  // the rest of the groups: grey, and no other group is
  // A series' colour: the palette's first, then hues spread by the golden angle, dark and light
  // in turn, so that no two series of a chart (up to the API's 1,000 groups) share a colour.
  function colour(i, label) {
    if (label === OTHER) return "#868e96";
    if (i < palette.length) return palette[i];
    var hue = ((i * 137.508) % 360).toFixed(1);
    return "hsl(" + hue + ", 65%, " + [38, 52, 30][i % 3] + "%)";
  }
  document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
    var source = document.getElementById(canvas.getAttribute("data-chart"));
    if (!source) return;
    var data = JSON.parse(source.textContent);
    var step = data.kind === "step";  // a price over time; otherwise bars stacked per bucket
    new Chart(canvas, {
      type: step ? "line" : "bar",
      data: {
        labels: data.labels,
        datasets: data.series.map(function (s, i) {
          return {
            label: s.label,
            // drawn as numbers; the tooltip shows the exact decimal string. A null (a price
            // version without that price) stays null: a gap in the line, not a 0
            data: s.values.map(function (v) { return v === null ? null : Number(v); }),
            exact: s.values,
            backgroundColor: colour(i, s.label),
            borderColor: colour(i, s.label),
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
