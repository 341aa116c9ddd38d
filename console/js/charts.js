// charts.js — the Overview's charts as inline SVG built here (no chart
// library, nothing from a CDN): a line chart of rates and a bar chart of
// amounts per day. Each chart is a <figure> with a caption, an SVG that
// names itself, and the same numbers as a table for screen readers.
import { h, svg } from './dom.js';

const W = 640;
const H = 220;
const PAD = { left: 48, right: 12, top: 12, bottom: 28 };

function frame(label, max, fmt, n, xLabel) {
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const g = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label, class: 'chart', preserveAspectRatio: 'none' },
    svg('title', {}, label));
  for (let i = 0; i <= 4; i++) {
    const y = PAD.top + plotH - (plotH * i) / 4;
    g.append(svg('line', { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: 'grid' }),
      svg('text', { x: PAD.left - 6, y: y + 4, class: 'axis', 'text-anchor': 'end' }, fmt((max * i) / 4)));
  }
  const step = Math.max(1, Math.ceil(n / 6));
  for (let i = 0; i < n; i += step) {
    const x = PAD.left + (plotW * (i + 0.5)) / n;
    g.append(svg('text', { x, y: H - 8, class: 'axis', 'text-anchor': 'middle' }, xLabel(i)));
  }
  return { g, plotW, plotH };
}

function dataTable(caption, rows, columns) {
  return h('details', { class: 'chart-data' }, h('summary', {}, caption),
    h('table', {}, h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows.map((r) => h('tr', {}, r.map((v) => h('td', {}, v)))))));
}

// points: [{x: label, y: number|null}]
export function lineChart(label, points, fmt, tableCaption, columns) {
  const max = 1;
  const { g, plotW, plotH } = frame(label, max, fmt, points.length, (i) => points[i].x.slice(5));
  let d = '';
  points.forEach((p, i) => {
    if (p.y === null || p.y === undefined) return;
    const x = PAD.left + (plotW * (i + 0.5)) / points.length;
    const y = PAD.top + plotH - plotH * Math.min(1, p.y / max);
    d += (d ? ' L' : 'M') + x.toFixed(1) + ' ' + y.toFixed(1);
    g.append(svg('circle', { cx: x, cy: y, r: 3, class: 'dot' }, svg('title', {}, `${p.x}: ${fmt(p.y)}`)));
  });
  if (d) g.insertBefore(svg('path', { d, class: 'line' }), g.querySelector('circle'));
  return h('figure', { class: 'figure' }, h('figcaption', {}, label), g,
    dataTable(tableCaption, points.map((p) => [p.x, p.y === null ? '—' : fmt(p.y)]), columns));
}

export function barChart(label, points, fmt, tableCaption, columns) {
  const top = Math.max(...points.map((p) => p.y || 0), 0);
  const max = top > 0 ? niceCeil(top) : 1;
  const { g, plotW, plotH } = frame(label, max, fmt, points.length, (i) => points[i].x.slice(5));
  const bw = (plotW / points.length) * 0.7;
  points.forEach((p, i) => {
    const v = p.y || 0;
    const bh = (plotH * v) / max;
    const x = PAD.left + (plotW * (i + 0.5)) / points.length - bw / 2;
    g.append(svg('rect', { x, y: PAD.top + plotH - bh, width: bw, height: Math.max(bh, 0), class: 'bar' },
      svg('title', {}, `${p.x}: ${fmt(v)}`)));
  });
  return h('figure', { class: 'figure' }, h('figcaption', {}, label), g,
    dataTable(tableCaption, points.map((p) => [p.x, fmt(p.y || 0)]), columns));
}

function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

// A horizontal meter (0..1), e.g. an operator's delivery rate.
export function meter(rate, label) {
  const el = h('div', { class: 'meter', role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': rate === null ? '0' : String(Math.round(rate * 100)), 'aria-label': label });
  const fill = h('div', { class: 'meter-fill' });
  fill.style.width = `${Math.round((rate || 0) * 100)}%`;
  el.append(fill);
  return el;
}
