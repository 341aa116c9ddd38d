// One invoice, laid out to be printed (the print style sheet hides the
// console around it): seller and buyer with their legal identifiers (ICE,
// IF, RC, address), the lines, totals HT, TVA 20% and TTC in MAD.
import { h, replace } from '../dom.js';
import { get } from '../api.js';
import { t, date, money, num, pct } from '../i18n.js';
import { pageHeader, table, button } from '../ui.js';

function party(title, p) {
  return h('section', { class: 'party' }, h('h2', {}, title),
    h('p', { class: 'party-name' }, p.name || '—'),
    h('p', {}, [p.address, p.city].filter(Boolean).join(', ') || '—'),
    h('p', {}, `ICE : ${p.ice || '—'}`), h('p', {}, `IF : ${p.if || '—'}`), h('p', {}, `RC : ${p.rc || '—'}`),
    p.vat_id ? h('p', {}, `${t('invoice.vat_id')} : ${p.vat_id}`) : null);
}

export default {
  perm: ['billing'],
  async render(main, r) {
    const inv = await get('/v1/console/invoices/' + encodeURIComponent(r.args[0] || ''));
    replace(main,
      pageHeader(t('invoice.title', { number: inv.number }),
        button(t('invoice.print'), () => window.print(), { class: 'btn-primary' }),
        h('a', { class: 'btn', href: '#/billing' }, t('common.back'))),
      h('article', { class: 'invoice', 'aria-label': t('invoice.title', { number: inv.number }) },
        h('header', { class: 'invoice-head' },
          h('div', {}, h('p', { class: 'invoice-kind' }, t('invoice.kind')), h('p', { class: 'invoice-number' }, inv.number)),
          h('div', { class: 'invoice-meta' }, h('p', {}, `${t('invoice.issued')} : ${date(inv.issued_at, false)}`),
            h('p', {}, `${t('invoice.topup')} : ${inv.topup_id}`),
            h('p', {}, `${t('invoice.paid_with')} : ${t('billing.method_' + inv.paid_with)}${inv.payment_reference ? ' · ' + inv.payment_reference : ''}`))),
        h('div', { class: 'parties' }, party(t('invoice.seller'), inv.seller || {}), party(t('invoice.buyer'), inv.buyer || {})),
        table([
          { label: t('invoice.description'), value: (l) => l.description },
          { label: t('invoice.quantity'), class: 'num', value: (l) => num(l.quantity, 0) },
          { label: t('invoice.unit_ht'), class: 'num', value: (l) => money(l.unit_ht_mad, 'MAD') },
          { label: t('invoice.total_ht'), class: 'num', value: (l) => money(l.total_ht_mad, 'MAD') },
        ], inv.lines, { label: t('invoice.lines') }),
        h('dl', { class: 'totals' },
          h('dt', {}, t('invoice.total_ht')), h('dd', {}, money(inv.total_ht_mad, 'MAD')),
          h('dt', {}, t('invoice.tva', { rate: pct(inv.tva_rate) })), h('dd', {}, money(inv.tva_mad, 'MAD')),
          h('dt', { class: 'grand' }, t('invoice.total_ttc')), h('dd', { class: 'grand' }, money(inv.total_ttc_mad, 'MAD'))),
        h('p', { class: 'muted small' }, t('invoice.footer'))));
  },
};
