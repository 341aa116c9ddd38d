// Team (owner): the account's users and their roles, invitations (the
// invitation link shown once), role changes and removal.
import { h, replace } from '../dom.js';
import { get, post, patch, del } from '../api.js';
import { t, date } from '../i18n.js';
import { pageHeader, card, table, form, field, input, select, button, copyButton, notice, outcome } from '../ui.js';

const ROLES = ['owner', 'developer', 'billing', 'viewer'];

export default {
  owner: true,
  async render(main, r, ctx) {
    const said = outcome();
    const usersSlot = h('div');
    const invitesSlot = h('div');
    async function refresh() {
      const u = await get('/v1/console/users');
      replace(usersSlot, table([
        { label: t('profile.name'), value: (x) => x.name || '' },
        { label: t('signin.email'), value: (x) => x.email },
        { label: t('team.role'), value: (x) => {
          if (x.user_id === ctx.session.user.user_id) return t('role.' + x.role);
          const s = select(ROLES.map((k) => [k, t('role.' + k)]), { 'aria-label': `${t('team.role')} ${x.email}` });
          s.value = x.role;
          s.addEventListener('change', async () => {
            try { await patch('/v1/console/users/' + encodeURIComponent(x.user_id), { role: s.value }); said.show(t('common.saved'), 'ok'); } catch (err) { said.show(err); s.value = x.role; }
          });
          return s;
        } },
        { label: t('team.two_factor'), value: (x) => (x.two_factor ? t('common.yes') : t('common.no')) },
        { label: t('team.last_sign_in'), value: (x) => date(x.last_sign_in_at) },
        { label: t('common.actions'), value: (x) => (x.user_id === ctx.session.user.user_id ? '' : button(t('team.remove'), async () => {
          try { await del('/v1/console/users/' + encodeURIComponent(x.user_id)); await refresh(); } catch (err) { said.show(err); }
        }, { class: 'btn-small btn-danger', confirm: t('team.remove_confirm', { email: x.email }), aria: `${t('team.remove')} ${x.email}` })) },
      ], u.data, { label: t('team.users') }));
      replace(invitesSlot, table([
        { label: t('signin.email'), value: (x) => x.email },
        { label: t('team.role'), value: (x) => t('role.' + x.role) },
        { label: t('team.expires'), value: (x) => date(x.expires_at) },
        { label: t('common.actions'), value: (x) => button(t('team.cancel_invite'), async () => { await del('/v1/console/invitations/' + encodeURIComponent(x.invitation_id)); await refresh(); }, { class: 'btn-small' }) },
      ], u.invitations, { empty: t('team.no_invitations'), label: t('team.invitations') }));
    }
    const email = input({ type: 'email', name: 'invite_email', required: true });
    const role = select(ROLES.map((k) => [k, t('role.' + k)]), { name: 'role' });
    role.value = 'developer';
    const link = h('div', { 'aria-live': 'polite' });
    const invite = form([field(t('signin.email'), email), field(t('team.role'), role)], t('team.invite'), async () => {
      const inv = await post('/v1/console/invitations', { email: email.value.trim(), role: role.value });
      const url = new URL(inv.accept_url || '/console/#/accept/' + inv.token, location.href).href;
      replace(link, notice('warn', t('team.link_once')), h('div', { class: 'secret-row' }, h('code', { class: 'secret' }, url), copyButton(() => url)));
      email.value = '';
      await refresh();
      return null;
    });
    await refresh();
    replace(main, pageHeader(t('nav.team')), said,
      card(t('team.users'), usersSlot),
      h('div', { class: 'grid2' }, card(t('team.invite_title'), invite, link), card(t('team.invitations'), invitesSlot)),
      card(t('team.roles'), h('ul', { class: 'roles' }, ROLES.map((k) => h('li', {}, h('strong', {}, t('role.' + k)), ' — ', t('role_help.' + k))))));
  },
};
