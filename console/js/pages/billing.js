// Billing: the balance, packs, a top-up by Stripe Checkout (the browser
// goes to Stripe's page and comes back here) or by bank transfer (the
// reference and instructions shown), the top-ups and ledger, the invoices,
// and the account's legal identifiers printed on them (ICE, IF, RC).
import { h, replace } from '../dom.js';
import { get, post, patch } from '../api.js';
import { t, date, money, num } from '../i18n.js';
import { pageHeader, card, table, badge, form, field, input, select, stat, dl, notice, outcome } from '../ui.js';

async function optional(path, params) {
  try { return await get(path, params); } catch (err) { if (err.status === 404) return null; throw err; }
}

export default {
  perm: ['billing', 'balance'],
  async render(main, r, ctx) {
    const billing = (ctx.session.permissions || []).includes('billing');
    const balance = await get('/v1/billing/balance');
    const parts = [pageHeader(t('nav.billing')),
      h('div', { class: 'stats' }, stat(t('overview.balance'), money(balance.balance_mad, 'MAD'), money(balance.balance_eur, 'EUR')),
        balance.plan ? stat(t('billing.plan'), balance.plan) : null)];
    const back = r.params.get('topup');
    if (back) {
      const tp = await get('/v1/billing/topups/' + encodeURIComponent(back));
      parts.push(notice(tp.status === 'completed' ? 'ok' : 'warn', t('billing.returned_' + (tp.status === 'completed' ? 'completed' : 'pending'), { amount: money(tp.amount_mad, 'MAD') })));
    }
    if (!billing) { replace(main, ...parts); return; }
    const [packs, methods, topups, invoices, ledger, account] = await Promise.all([
      get('/v1/billing/packs'), get('/v1/billing/payment-methods'), get('/v1/billing/topups', { limit: 50 }),
      get('/v1/console/invoices', { limit: 50 }), optional('/v1/console/ledger', { limit: 50 }), get('/v1/console/account')]);

    const amount = input({ name: 'amount_mad', type: 'number', min: '1', step: '0.01', placeholder: '500' });
    const pack = select([['', t('billing.no_pack')], ...(packs.packs || []).map((p) => [p.id, `${p.name} — ${money(p.price_mad, 'MAD')} (${num(p.sms_count, 0)} SMS)`])], { name: 'pack_id' });
    const method = select((methods.payment_methods || []).map((m) => [m.id, t('billing.method_' + m.id)]), { name: 'payment_method' });
    const transfer = h('div', { 'aria-live': 'polite' });
    const topup = (methods.payment_methods || []).length === 0
      ? notice('warn', t('billing.no_method'))
      : form([field(t('billing.pack'), pack), field(t('billing.amount'), amount, t('billing.amount_hint')), field(t('billing.method'), method)],
        t('billing.topup'), async () => {
          const b = { payment_method: method.value };
          if (pack.value) b.pack_id = pack.value; else b.amount_mad = Number(amount.value);
          const tp = await post('/v1/billing/topups', b);
          if (tp.checkout_url) {
            // only a web address: never a javascript: or data: URL, whoever wrote it
            if (!/^https?:\/\//i.test(tp.checkout_url)) throw new Error(t('billing.bad_checkout'));
            location.assign(tp.checkout_url);
            return t('billing.redirecting');
          }
          if (tp.bank_transfer) {
            replace(transfer, card(t('billing.transfer'), dl([
              [t('billing.reference'), h('code', {}, tp.bank_transfer.reference || tp.reference)],
              [t('billing.amount'), money(tp.bank_transfer.amount ?? tp.amount, tp.bank_transfer.currency || 'MAD')],
              tp.bank_transfer.iban ? ['IBAN', h('code', {}, tp.bank_transfer.iban)] : null,
              tp.bank_transfer.bank_name ? [t('billing.bank'), tp.bank_transfer.bank_name] : null,
              [t('billing.instructions'), tp.bank_transfer.instructions],
            ])));
          }
          return null;
        });

    const ice = input({ name: 'ice', inputmode: 'numeric', maxlength: '15', value: account.ice || '' });
    const ifn = input({ name: 'if', inputmode: 'numeric', maxlength: '10', value: account.if || '' });
    const rc = input({ name: 'rc', maxlength: '20', value: account.rc || '' });
    const name = input({ name: 'legal_name', value: account.name || '' });
    const address = input({ name: 'address', value: account.address || '' });
    const city = input({ name: 'city', value: account.city || '' });
    const legal = form([field(t('billing.legal_name'), name), field('ICE', ice, t('billing.ice_hint')), field(t('billing.if'), ifn), field(t('billing.rc'), rc),
      field(t('billing.address'), address), field(t('billing.city'), city)], t('common.save'), async () => {
      await patch('/v1/console/account', { name: name.value.trim(), ice: ice.value.trim() || null, if: ifn.value.trim() || null,
        rc: rc.value.trim() || null, address: address.value.trim() || null, city: city.value.trim() || null });
      return t('common.saved');
    });

    parts.push(
      h('div', { class: 'grid2' }, card(t('billing.topup_title'), topup, transfer), card(t('billing.legal'), legal)),
      card(t('billing.invoices'), table([
        { label: t('billing.number'), value: (i) => h('a', { href: '#/invoice/' + encodeURIComponent(i.invoice_id) }, i.number) },
        { label: t('billing.issued'), value: (i) => date(i.issued_at, false) },
        { label: t('billing.total_ht'), class: 'num', value: (i) => money(i.total_ht_mad, 'MAD') },
        { label: t('billing.tva'), class: 'num', value: (i) => money(i.tva_mad, 'MAD') },
        { label: t('billing.total_ttc'), class: 'num', value: (i) => money(i.total_ttc_mad, 'MAD') },
      ], invoices.data, { empty: t('billing.no_invoices'), label: t('billing.invoices') })),
      card(t('billing.packs'), table([
        { label: t('billing.pack'), value: (p) => p.name },
        { label: 'SMS', class: 'num', value: (p) => num(p.sms_count, 0) },
        { label: t('billing.price'), class: 'num', value: (p) => `${money(p.price_mad, 'MAD')} · ${money(p.price_eur, 'EUR')}` },
        { label: t('billing.credit'), class: 'num', value: (p) => money(p.credit_mad, 'MAD') },
      ], packs.packs, { label: t('billing.packs') })),
      card(t('billing.topups'), table([
        { label: t('common.date'), value: (x) => date(x.created_at) },
        { label: t('billing.method'), value: (x) => t('billing.method_' + x.payment_method) },
        { label: t('billing.amount'), class: 'num', value: (x) => money(x.amount_mad, 'MAD') },
        { label: t('common.status'), value: (x) => badge(x.status) },
        { label: t('billing.reference'), value: (x) => h('code', {}, x.reference || '') },
      ], topups.topups, { empty: t('billing.no_topups'), label: t('billing.topups') })));
    if (ledger) {
      parts.push(card(t('billing.ledger'), table([
        { label: t('common.date'), value: (x) => date(x.created_at) },
        { label: t('billing.kind'), value: (x) => t('ledger.' + x.kind) === 'ledger.' + x.kind ? x.kind : t('ledger.' + x.kind) },
        { label: t('billing.amount'), class: 'num', value: (x) => money(x.amount_mad, 'MAD') },
        { label: t('billing.reference'), value: (x) => x.reference || x.topup_id || '' },
      ], ledger.data, { empty: t('billing.no_ledger'), label: t('billing.ledger') })));
    }
    replace(main, ...parts);
  },
};
