// Webhooks: create (the signing secret shown once), test, and per webhook
// the deliveries log (status, attempts, latency, response code, error as
// text) with a replay of a failed delivery.
import { h, replace } from '../dom.js';
import { get, post, patch, del } from '../api.js';
import { t, date, num } from '../i18n.js';
import { pageHeader, card, table, badge, form, field, input, button, checkboxes, checkedValues, copyButton, notice, outcome } from '../ui.js';

const EVENTS = ['message.sent', 'message.delivered', 'message.failed', 'message.expired', 'message.received', 'verify.success'];

async function list(main) {
  const listSlot = h('div');
  const shown = h('div', { 'aria-live': 'polite' });
  const said = outcome();
  async function refresh() {
    const rows = (await get('/v1/webhooks')).data || [];
    replace(listSlot, table([
      { label: t('webhooks.url'), class: 'wrap', value: (w) => h('a', { href: '#/webhooks/' + encodeURIComponent(w.id) }, w.url) },
      { label: t('webhooks.events'), value: (w) => (w.events || []).join(', ') },
      { label: t('common.status'), value: (w) => badge(w.active ? 'active' : 'suspended') },
      { label: t('webhooks.last'), value: (w) => (w.last_status ? `${w.last_status} · ${date(w.last_triggered_at)}` : '—') },
      { label: t('common.actions'), value: (w) => h('div', { class: 'row-actions' },
        button(t('webhooks.test'), async () => { await post(`/v1/webhooks/${encodeURIComponent(w.id)}/test`); said.show(t('webhooks.test_queued'), 'ok'); }, { class: 'btn-small', aria: `${t('webhooks.test')} ${w.url}` }),
        button(w.active ? t('keys.suspend') : t('keys.resume'), async () => { await patch('/v1/webhooks/' + encodeURIComponent(w.id), { active: !w.active }); await refresh(); }, { class: 'btn-small' }),
        button(t('common.delete'), async () => { await del('/v1/webhooks/' + encodeURIComponent(w.id)); await refresh(); },
          { class: 'btn-small btn-danger', confirm: t('webhooks.delete_confirm') })) },
    ], rows, { empty: t('webhooks.none'), label: t('nav.webhooks') }));
  }
  const url = input({ name: 'url', type: 'url', required: true, placeholder: 'https://exemple.ma/envoisms' });
  const events = checkboxes(t('webhooks.events'), EVENTS, ['message.delivered', 'message.failed']);
  const create = form([field(t('webhooks.url'), url), events], t('webhooks.create'), async () => {
    const w = await post('/v1/webhooks', { url: url.value.trim(), events: checkedValues(events) });
    replace(shown, notice('warn', t('webhooks.secret_once')),
      h('div', { class: 'secret-row' }, h('code', { class: 'secret' }, w.secret), copyButton(() => w.secret)));
    url.value = '';
    await refresh();
    return null;
  });
  await refresh();
  replace(main, pageHeader(t('nav.webhooks')), card(t('webhooks.new'), create, shown), card(t('webhooks.list'), said, listSlot));
}

async function deliveries(main, id) {
  const slot = h('div');
  const said = outcome();
  async function refresh() {
    const rows = (await get(`/v1/console/webhooks/${encodeURIComponent(id)}/deliveries`, { limit: 100 })).data || [];
    replace(slot, table([
      { label: t('common.date'), value: (d) => date(d.created_at) },
      { label: t('webhooks.event'), value: (d) => d.event },
      { label: t('common.status'), value: (d) => badge(d.status) },
      { label: t('webhooks.attempts'), class: 'num', value: (d) => num(d.attempts, 0) },
      { label: t('webhooks.response'), class: 'num', value: (d) => (d.response_code ?? '—') },
      { label: t('webhooks.latency'), class: 'num', value: (d) => (d.latency_ms === null || d.latency_ms === undefined ? '—' : `${num(d.latency_ms, 0)} ms`) },
      { label: t('webhooks.next'), value: (d) => date(d.next_attempt_at) },
      { label: t('webhooks.error'), class: 'wrap', value: (d) => d.error || '' },
      { label: t('common.actions'), value: (d) => (d.status === 'failed' || d.status === 'cancelled'
        ? button(t('webhooks.replay'), async () => {
          const again = await post(`/v1/console/webhook-deliveries/${encodeURIComponent(d.delivery_id)}/replay`);
          said.show(t('webhooks.replayed', { id: again.delivery_id }), 'ok');
          await refresh();
        }, { class: 'btn-small', aria: `${t('webhooks.replay')} ${d.delivery_id}` }) : '') },
    ], rows, { empty: t('webhooks.no_deliveries'), label: t('webhooks.deliveries') }));
  }
  await refresh();
  replace(main, pageHeader(t('webhooks.deliveries'), button(t('common.refresh'), refresh), h('a', { class: 'btn', href: '#/webhooks' }, t('common.back'))),
    card(null, h('p', { class: 'muted' }, h('code', {}, id)), said, slot));
}

export default {
  perm: ['webhooks'],
  render(main, r) {
    return r.args[0] ? deliveries(main, r.args[0]) : list(main);
  },
};
