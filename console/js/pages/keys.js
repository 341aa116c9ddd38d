// API keys: create (the key shown once, with a copy button), permissions
// within the session's own, IP allowlist, rate limit, suspend and revoke.
// The API's rules decide (no escalation): the page only offers what the
// session holds and shows the API's refusal as it is.
import { h, replace } from '../dom.js';
import { get, post, patch, del } from '../api.js';
import { t, date, num } from '../i18n.js';
import { pageHeader, card, table, badge, form, field, input, button, checkboxes, checkedValues, copyButton, notice } from '../ui.js';

const ALL = ['send', 'status', 'verify', 'balance', 'contacts', 'campaigns', 'webhooks', 'billing', 'analytics', 'api_keys', 'optouts'];

export default {
  perm: ['api_keys'],
  async render(main, r, ctx) {
    const keys = (await get('/v1/api-keys')).data || [];
    const mine = ALL.filter((p) => (ctx.session.permissions || []).includes(p));
    const name = input({ name: 'name', required: true, maxlength: '100', placeholder: t('keys.name_placeholder') });
    const perms = checkboxes(t('keys.permissions'), mine, ['send', 'status'].filter((p) => mine.includes(p)), (p) => t('perm.' + p));
    const ips = h('textarea', { name: 'ip_whitelist', rows: '2', placeholder: '196.200.1.4\n10.0.0.0/24' });
    const rate = input({ name: 'rate_limit', type: 'number', min: '10', max: '1000', value: '100' });
    const live = h('select', { name: 'mode' }, h('option', { value: 'live' }, t('keys.live')), h('option', { value: 'test' }, t('keys.test')));
    const shown = h('div', { class: 'secret-slot', 'aria-live': 'polite' });
    const create = form([
      field(t('keys.name'), name), perms, field(t('keys.ip_whitelist'), ips, t('keys.ip_hint')),
      field(t('keys.rate_limit'), rate, t('keys.rate_hint')), field(t('keys.mode'), live),
    ], t('keys.create'), async () => {
      const body = {
        name: name.value.trim() || undefined,
        permissions: checkedValues(perms),
        ip_whitelist: ips.value.split(/[\s,]+/).filter(Boolean),
        rate_limit: Number(rate.value) || undefined,
      };
      body.key_prefix = live.value === 'test' ? 'env_test' : 'env_live';
      const k = await post('/v1/api-keys', body);
      const value = h('code', { class: 'secret', id: 'new-key' }, k.api_key);
      replace(shown, notice('warn', t('keys.shown_once')),
        h('div', { class: 'secret-row' }, value, copyButton(() => k.api_key, t('keys.copy'))));
      name.value = '';
      await refreshList();
      return null;
    });
    const listSlot = h('div');
    async function refreshList(fresh) {
      const rows = fresh || (await get('/v1/api-keys')).data || [];
      replace(listSlot, table([
        { label: t('keys.name'), value: (k) => k.name },
        { label: t('keys.prefix'), value: (k) => h('code', {}, k.key_prefix + '_' + (k.key_hint || '…')) },
        { label: t('keys.permissions'), value: (k) => (k.permissions || []).map((p) => t('perm.' + p)).join(', ') },
        { label: t('keys.ip_whitelist'), value: (k) => ((k.ip_whitelist || []).length ? k.ip_whitelist.join(', ') : t('keys.any_ip')) },
        { label: t('keys.rate_limit'), class: 'num', value: (k) => (k.rate_limit ? num(k.rate_limit, 0) + '/min' : '—') },
        { label: t('common.status'), value: (k) => badge(k.revoked_at ? 'revoked' : k.active ? 'active' : 'suspended') },
        { label: t('keys.last_used'), value: (k) => date(k.last_used_at) },
        { label: t('common.actions'), value: (k) => (k.revoked_at ? '' : h('div', { class: 'row-actions' },
          button(k.active ? t('keys.suspend') : t('keys.resume'), async () => { await patch('/v1/api-keys/' + encodeURIComponent(k.id), { active: !k.active }); await refreshList(); }, { class: 'btn-small', aria: `${k.active ? t('keys.suspend') : t('keys.resume')} ${k.name}` }),
          button(t('keys.revoke'), async () => { await del('/v1/api-keys/' + encodeURIComponent(k.id)); await refreshList(); },
            { class: 'btn-small btn-danger', confirm: t('keys.revoke_confirm', { name: k.name }), aria: `${t('keys.revoke')} ${k.name}` }))) },
      ], rows, { empty: t('keys.none'), label: t('nav.keys') }));
    }
    await refreshList(keys);
    replace(main, pageHeader(t('nav.keys')),
      card(t('keys.new'), create, shown),
      card(t('keys.list'), listSlot));
  },
};
