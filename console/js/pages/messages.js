// Messages: search by number, status, channel, dates and campaign; a
// message's delivery timeline, cost and segments; the CSV export
// (GET /v1/messages, GET /v1/messages/:id, GET /v1/console/messages/export).
import { h, replace } from '../dom.js';
import { get, query } from '../api.js';
import { t, num, money, date } from '../i18n.js';
import { pageHeader, card, table, badge, field, input, select, pager, dl } from '../ui.js';

const FILTERS = ['to', 'status', 'channel', 'from_date', 'to_date', 'campaign_id'];
const LIMIT = 50;

function filtersForm(params) {
  const to = input({ name: 'to', type: 'search', placeholder: '+2126…', value: params.get('to') || '' });
  const status = select([['', t('common.all')], ...['queued', 'sent', 'delivered', 'failed', 'expired'].map((s) => [s, t('status.' + s)])], { name: 'status' });
  const channel = select([['', t('common.all')], ['sms', 'SMS'], ['whatsapp', 'WhatsApp']], { name: 'channel' });
  const from = input({ name: 'from_date', type: 'date', value: params.get('from_date') || '' });
  const until = input({ name: 'to_date', type: 'date', value: params.get('to_date') || '' });
  const campaign = input({ name: 'campaign_id', placeholder: 'cmp_…', value: params.get('campaign_id') || '' });
  status.value = params.get('status') || '';
  channel.value = params.get('channel') || '';
  const f = h('form', { class: 'filters', role: 'search' },
    field(t('messages.number'), to), field(t('common.status'), status), field(t('common.channel'), channel),
    field(t('messages.from_date'), from), field(t('messages.to_date'), until), field(t('messages.campaign'), campaign),
    h('div', { class: 'form-actions' }, h('button', { type: 'submit', class: 'btn btn-primary' }, t('messages.search'))));
  f.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = {};
    for (const el of f.elements) if (el.name && el.value.trim()) q[el.name] = el.value.trim();
    location.hash = '#/messages' + query(q);
  });
  return f;
}

function apiFilters(params) {
  const q = {};
  for (const k of FILTERS) if (params.get(k)) q[k] = params.get(k);
  // a date picked in the form means the whole day, UTC
  if (q.from_date && /^\d{4}-\d\d-\d\d$/.test(q.from_date)) q.from_date += 'T00:00:00Z';
  if (q.to_date && /^\d{4}-\d\d-\d\d$/.test(q.to_date)) q.to_date += 'T23:59:59Z';
  return q;
}

async function list(main, r) {
  const offset = Math.max(0, Number(r.params.get('offset')) || 0);
  const filters = apiFilters(r.params);
  const page = await get('/v1/messages', { ...filters, limit: LIMIT, offset });
  const exportLink = h('a', { class: 'btn', href: '/v1/console/messages/export' + query(filters), download: 'messages.csv' }, t('messages.export'));
  replace(main, 
    pageHeader(t('nav.messages'), exportLink),
    card(null, filtersForm(r.params)),
    card(t('messages.results', { n: num(page.total ?? page.data.length, 0) }),
      table([
        { label: t('common.date'), value: (m) => date(m.created_at) },
        { label: t('messages.to'), value: (m) => h('a', { href: '#/messages/' + encodeURIComponent(m.id) }, m.to) },
        { label: t('common.channel'), value: (m) => t('channel.' + m.channel) },
        { label: t('common.status'), value: (m) => badge(m.status) },
        { label: t('messages.body'), class: 'body-cell', value: (m) => m.body ?? '' },
        { label: t('messages.cost'), class: 'num', value: (m) => money(m.cost_mad, 'MAD') },
      ], page.data, { empty: t('messages.none'), label: t('nav.messages') }),
      pager(page.total, LIMIT, offset, (o) => { const p = new URLSearchParams(r.params); p.set('offset', o); location.hash = '#/messages?' + p; })));
}

async function detail(main, id) {
  const m = await get('/v1/messages/' + encodeURIComponent(id));
  replace(main, 
    pageHeader(t('messages.message'), h('a', { class: 'btn', href: '#/messages' }, t('common.back'))),
    h('div', { class: 'grid2' },
      card(t('messages.details'), dl([
        [t('messages.id'), h('code', {}, m.id)],
        [t('messages.to'), m.to],
        [t('messages.sender'), m.sender_id],
        [t('common.channel'), t('channel.' + m.channel)],
        [t('common.status'), badge(m.status)],
        [t('messages.segments'), num(m.segments, 0)],
        [t('messages.encoding'), m.unicode ? 'UCS-2' : 'GSM-7'],
        [t('messages.cost'), `${money(m.cost_mad, 'MAD')} · ${money(m.cost_eur, 'EUR')}`],
        m.campaign_id ? [t('messages.campaign'), h('a', { href: '#/campaigns/' + encodeURIComponent(m.campaign_id) }, m.campaign_id)] : null,
        m.failure_reason ? [t('messages.failure'), m.failure_reason] : null,
        [t('common.created'), date(m.created_at)],
      ])),
      card(t('messages.timeline'), h('ol', { class: 'timeline' }, (m.events || []).map((e) =>
        h('li', {}, badge(e.status), ' ', h('time', { datetime: e.created_at }, date(e.created_at)),
          e.error_code ? h('span', { class: 'muted' }, ' · ', e.error_code) : null))))),
    card(t('messages.body'), h('pre', { class: 'body' }, m.body ?? '')),
    m.metadata ? card(t('messages.metadata'), h('pre', { class: 'body' }, typeof m.metadata === 'string' ? m.metadata : JSON.stringify(m.metadata, null, 2))) : null);
}

export default {
  perm: ['status'],
  render(main, r) {
    return r.args[0] ? detail(main, r.args[0]) : list(main, r);
  },
};
