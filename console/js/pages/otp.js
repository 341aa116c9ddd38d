// OTP: verification sessions and their status, the conversion rate over
// the window (GET /v1/console/verifications). A code is never shown: the
// API does not return one.
import { h, replace } from '../dom.js';
import { get } from '../api.js';
import { t, date, num, pct } from '../i18n.js';
import { pageHeader, card, table, badge, select, stat } from '../ui.js';

export default {
  perm: ['verify'],
  async render(main, r) {
    const status = r.params.get('status') || '';
    const v = await get('/v1/console/verifications', { limit: 100, status });
    const pick = select([['', t('common.all')], ...['pending', 'verified', 'expired', 'failed', 'cancelled'].map((s) => [s, t('status.' + s)])],
      { 'aria-label': t('common.status'), id: 'otp-status' });
    pick.value = status;
    pick.addEventListener('change', () => { location.hash = '#/otp' + (pick.value ? '?status=' + pick.value : ''); });
    replace(main, pageHeader(t('nav.otp'), pick),
      h('div', { class: 'stats' }, stat(t('otp.conversion'), pct(v.conversion_rate), t('overview.days', { n: v.window_days || 30 })),
        stat(t('otp.sessions'), num((v.data || []).length, 0), t('otp.shown'))),
      card(t('otp.sessions'), table([
        { label: t('common.created'), value: (x) => date(x.created_at) },
        { label: t('otp.id'), value: (x) => h('code', {}, x.verification_id) },
        { label: t('messages.to'), value: (x) => x.to },
        { label: t('common.channel'), value: (x) => t('channel.' + x.channel) },
        { label: t('common.status'), value: (x) => badge(x.status) },
        { label: t('otp.attempts'), class: 'num', value: (x) => num(x.attempts, 0) },
        { label: t('otp.expires'), value: (x) => date(x.expires_at) },
      ], v.data, { empty: t('otp.none'), label: t('otp.sessions') })));
  },
};
