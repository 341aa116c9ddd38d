// Operator area (users with the operator flag): accounts (create, suspend,
// top up, per-account prices), carriers and routes (bind state, throughput,
// last error), workers and queue depths, webhook dead letters.
import { h, replace } from '../dom.js';
import { get, post, patch, put } from '../api.js';
import { t, date, money, num } from '../i18n.js';
import { pageHeader, card, table, badge, form, field, input, button, outcome, dl } from '../ui.js';

const TABS = ['accounts', 'carriers', 'workers', 'dead-letters'];

function tabs(current) {
  return h('nav', { class: 'tabs', 'aria-label': t('nav.operator') }, h('ul', {}, TABS.map((k) =>
    h('li', {}, h('a', { href: '#/operator/' + k, 'aria-current': k === current ? 'page' : null }, t('operator.tab_' + k))))));
}

async function accounts(main, ctx) {
  const said = outcome();
  const slot = h('div');
  async function refresh() {
    const a = await get('/v1/console/operator/accounts', { limit: 200 });
    replace(slot, table([
      { label: t('operator.account'), value: (x) => h('a', { href: '#/operator/account/' + encodeURIComponent(x.account_id) }, x.name) },
      { label: 'ID', value: (x) => h('code', {}, x.account_id) },
      { label: t('common.status'), value: (x) => badge(x.status) },
      { label: t('overview.balance'), class: 'num', value: (x) => money(x.balance_mad, 'MAD') },
      { label: t('operator.users'), class: 'num', value: (x) => num(x.users, 0) },
      { label: t('common.created'), value: (x) => date(x.created_at, false) },
      { label: t('common.actions'), value: (x) => button(x.status === 'suspended' ? t('operator.activate') : t('operator.suspend'), async () => {
        try { await patch('/v1/console/operator-accounts/' + encodeURIComponent(x.account_id), { status: x.status === 'suspended' ? 'active' : 'suspended' }); await refresh(); } catch (err) { said.show(err); }
      }, { class: 'btn-small' + (x.status === 'suspended' ? '' : ' btn-danger'), confirm: x.status === 'suspended' ? null : t('operator.suspend_confirm', { name: x.name }), aria: `${t('operator.suspend')} ${x.name}` }) },
    ], a.data, { label: t('operator.accounts') }));
  }
  const name = input({ name: 'account_name', required: true });
  const balance = input({ name: 'balance_mad', type: 'number', min: '0', step: '0.01', value: '0' });
  const create = form([field(t('operator.account_name'), name), field(t('operator.opening_balance'), balance)], t('operator.create_account'), async () => {
    const acc = await post('/v1/console/operator/accounts', { name: name.value.trim(), balance_mad: Number(balance.value) || 0 });
    name.value = '';
    await refresh();
    return t('operator.created', { id: acc.account_id });
  });
  await refresh();
  replace(main, pageHeader(t('nav.operator')), tabs('accounts'), said, card(t('operator.accounts'), slot), card(t('operator.new_account'), create));
}

async function account(main, id) {
  const said = outcome();
  const prices = await get(`/v1/console/operator-accounts/${encodeURIComponent(id)}/prices`);
  const inputs = (prices.data || []).map((p) => ({ p, mad: input({ type: 'number', step: '0.0001', min: '0', value: p.mad, 'aria-label': `${p.channel} MAD` }), eur: input({ type: 'number', step: '0.0001', min: '0', value: p.eur, 'aria-label': `${p.channel} EUR` }) }));
  const priceForm = form([table([
    { label: t('common.channel'), value: (x) => t('channel.' + x.p.channel) },
    { label: 'MAD', value: (x) => x.mad },
    { label: 'EUR', value: (x) => x.eur },
    { label: t('operator.default'), value: (x) => (x.p.default ? t('common.yes') : t('common.no')) },
  ], inputs, { label: t('operator.prices') })], t('common.save'), async () => {
    await put(`/v1/console/operator-accounts/${encodeURIComponent(id)}/prices`, { prices: inputs.map((x) => ({ channel: x.p.channel, mad: Number(x.mad.value), eur: Number(x.eur.value) })) });
    return t('common.saved');
  });
  const amount = input({ name: 'topup_amount', type: 'number', step: '0.01', min: '0.01', required: true });
  const reference = input({ name: 'reference' });
  const topup = form([field(t('billing.amount'), amount), field(t('billing.reference'), reference)], t('operator.credit'), async () => {
    const res = await post(`/v1/console/operator-accounts/${encodeURIComponent(id)}/topup`, { amount_mad: Number(amount.value), reference: reference.value.trim() || undefined });
    amount.value = '';
    return t('operator.credited', { balance: money(res.balance_mad, 'MAD') });
  });
  replace(main, pageHeader(t('operator.account') + ' ' + id, h('a', { class: 'btn', href: '#/operator/accounts' }, t('common.back'))), tabs('accounts'), said,
    h('div', { class: 'grid2' }, card(t('operator.prices'), priceForm), card(t('operator.topup'), topup)));
}

async function carriers(main) {
  const c = await get('/v1/console/operator/carriers');
  replace(main, pageHeader(t('nav.operator')), tabs('carriers'), card(t('operator.tab_carriers'), table([
    { label: 'ID', value: (x) => h('code', {}, x.carrier_id) },
    { label: t('operator.kind'), value: (x) => x.kind },
    { label: t('common.status'), value: (x) => badge(x.enabled ? 'active' : 'suspended') },
    { label: t('operator.bind'), value: (x) => (x.bind_state ? badge(x.bind_state) : '—') },
    { label: t('operator.throughput'), class: 'num', value: (x) => (x.max_per_second ? `${num(x.max_per_second, 0)}/s` : '—') },
    { label: t('operator.last_error'), class: 'wrap', value: (x) => x.last_error || '' },
    { label: t('operator.routes'), value: (x) => (x.routes || []).map((rt) => `${rt.channel} ${rt.prefix || '*'} (${rt.priority})`).join(', ') },
  ], c.data, { label: t('operator.tab_carriers') })));
}

async function workers(main) {
  const w = await get('/v1/console/operator/workers');
  const q = w.queues || {};
  const cols = (w.workers && w.workers[0]) ? Object.keys(w.workers[0]) : [];
  replace(main, pageHeader(t('nav.operator')), tabs('workers'),
    card(t('operator.queues'), dl(Object.keys(q).map((k) => [t('operator.q_' + k) === 'operator.q_' + k ? k : t('operator.q_' + k), num(q[k], 0)]))),
    card(t('operator.workers'), table(cols.map((k) => ({ label: k, value: (x) => (x[k] === null || x[k] === undefined ? '—' : typeof x[k] === 'object' ? JSON.stringify(x[k]) : String(x[k])) })),
      w.workers, { label: t('operator.workers') })));
}

async function deadLetters(main) {
  const d = await get('/v1/console/operator/dead-letters', { limit: 100 });
  replace(main, pageHeader(t('nav.operator')), tabs('dead-letters'), card(t('operator.tab_dead-letters'), table([
    { label: t('common.date'), value: (x) => date(x.created_at) },
    { label: t('operator.account'), value: (x) => h('code', {}, x.account_id) },
    { label: t('webhooks.event'), value: (x) => x.event },
    { label: t('webhooks.attempts'), class: 'num', value: (x) => num(x.attempts, 0) },
    { label: t('webhooks.response'), class: 'num', value: (x) => x.response_code ?? '—' },
    { label: t('webhooks.error'), class: 'wrap', value: (x) => x.error || '' },
  ], d.data, { empty: t('operator.no_dead_letters'), label: t('operator.tab_dead-letters') })));
}

export default {
  operator: true,
  render(main, r, ctx) {
    const tab = r.args[0] || 'accounts';
    if (tab === 'account') return account(main, r.args[1] || '');
    if (tab === 'carriers') return carriers(main);
    if (tab === 'workers') return workers(main);
    if (tab === 'dead-letters') return deadLetters(main);
    return accounts(main, ctx);
  },
};
