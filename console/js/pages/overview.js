// Overview: balance, messages today / 7 / 30 days by channel and status,
// delivery rate and spend per day, and per Moroccan operator the delivery
// rate and median delivery time (GET /v1/console/overview).
import { h, replace } from '../dom.js';
import { get } from '../api.js';
import { t, num, money, pct, seconds } from '../i18n.js';
import { pageHeader, card, stat, table, select } from '../ui.js';
import { lineChart, barChart, meter } from '../charts.js';

const STATUSES = ['queued', 'sent', 'delivered', 'failed', 'expired'];

function totalsTable(totals) {
  const rows = [];
  for (const period of ['today', '7d', '30d']) {
    for (const [channel, counts] of Object.entries(totals[period] || {})) {
      rows.push({ period, channel, counts });
    }
  }
  return table([
    { label: t('overview.period'), value: (r) => t('overview.period_' + r.period) },
    { label: t('common.channel'), value: (r) => t('channel.' + r.channel) },
    ...STATUSES.map((s) => ({ label: t('status.' + s), class: 'num', value: (r) => num(r.counts[s] || 0, 0) })),
  ], rows, { empty: t('overview.no_messages'), label: t('overview.volumes') });
}

function sum(totals, period, status) {
  return Object.values(totals[period] || {}).reduce((a, c) => a + (status ? c[status] || 0 : Object.values(c).reduce((x, y) => x + y, 0)), 0);
}

export default {
  perm: ['analytics'],
  async render(main, r) {
    const days = Math.min(90, Math.max(1, Number(r.params.get('days')) || 30));
    const o = await get('/v1/console/overview', { days });
    const picker = select([['7', t('overview.days', { n: 7 })], ['30', t('overview.days', { n: 30 })], ['90', t('overview.days', { n: 90 })]],
      { 'aria-label': t('overview.window'), id: 'overview-days' });
    picker.value = String(days);
    picker.addEventListener('change', () => { location.hash = '#/overview?days=' + picker.value; });
    const daily = o.daily || [];
    replace(main, 
      pageHeader(t('nav.overview'), picker),
      h('div', { class: 'stats' },
        stat(t('overview.balance'), money(o.balance.mad, 'MAD'), money(o.balance.eur, 'EUR')),
        stat(t('overview.today'), num(sum(o.totals, 'today'), 0), t('overview.delivered_n', { n: num(sum(o.totals, 'today', 'delivered'), 0) })),
        stat(t('overview.last7'), num(sum(o.totals, '7d'), 0), t('overview.delivered_n', { n: num(sum(o.totals, '7d', 'delivered'), 0) })),
        stat(t('overview.last30'), num(sum(o.totals, '30d'), 0), t('overview.delivered_n', { n: num(sum(o.totals, '30d', 'delivered'), 0) }))),
      h('div', { class: 'grid2' },
        card(null, lineChart(t('overview.rate_chart'), daily.map((d) => ({ x: d.date, y: d.delivery_rate })), (v) => pct(v),
          t('overview.show_data'), [t('common.date'), t('overview.delivery_rate')])),
        card(null, barChart(t('overview.spend_chart'), daily.map((d) => ({ x: d.date, y: d.spend_mad })), (v) => num(v, 2),
          t('overview.show_data'), [t('common.date'), t('overview.spend_mad')]))),
      card(t('overview.volumes'), totalsTable(o.totals || {})),
      card(t('overview.operators'), table([
        { label: t('overview.operator'), value: (x) => (x.operator === 'other' ? t('overview.other_operator') : x.operator) },
        { label: t('overview.messages'), class: 'num', value: (x) => num(x.messages, 0) },
        { label: t('overview.delivery_rate'), value: (x) => h('div', { class: 'meter-row' }, meter(x.delivery_rate, x.operator), h('span', {}, pct(x.delivery_rate))) },
        { label: t('overview.median_time'), class: 'num', value: (x) => seconds(x.median_delivery_seconds) },
      ], o.operators || [], { empty: t('overview.no_messages'), label: t('overview.operators') })));
  },
};
