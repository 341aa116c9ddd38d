// Profile: one's name, phone, second factor and password (PATCH /v1/console/me).
import { h, replace } from '../dom.js';
import { patch } from '../api.js';
import { t } from '../i18n.js';
import { pageHeader, card, form, field, input, dl } from '../ui.js';

export default {
  async render(main, r, ctx) {
    const u = ctx.session.user;
    const name = input({ name: 'name', autocomplete: 'name', value: u.name || '' });
    const phone = input({ type: 'tel', name: 'phone', autocomplete: 'tel', value: u.phone || '' });
    const tf = h('input', { type: 'checkbox', name: 'two_factor', checked: !!u.two_factor, id: 'two-factor' });
    const details = form([field(t('profile.name'), name), field(t('profile.phone'), phone),
      h('div', { class: 'field check' }, tf, h('label', { for: 'two-factor' }, t('profile.two_factor')))], t('common.save'), async () => {
      await patch('/v1/console/me', { name: name.value.trim(), phone: phone.value.trim() || null, two_factor: tf.checked });
      await ctx.refresh();
      return t('common.saved');
    });
    const current = input({ type: 'password', name: 'current_password', autocomplete: 'current-password', required: true });
    const next = input({ type: 'password', name: 'new_password', autocomplete: 'new-password', minlength: '10', required: true });
    const pw = form([field(t('profile.current_password'), current), field(t('profile.new_password'), next, t('accept.password_hint'))], t('profile.change_password'), async () => {
      await patch('/v1/console/me', { password: next.value, current_password: current.value });
      current.value = '';
      next.value = '';
      return t('profile.password_changed');
    });
    replace(main, pageHeader(t('nav.profile')),
      card(null, dl([[t('signin.email'), u.email], [t('team.role'), t('role.' + ctx.session.role)], [t('shell.account'), ctx.session.account.name]])),
      h('div', { class: 'grid2' }, card(t('profile.details'), details), card(t('profile.password'), pw)));
  },
};
