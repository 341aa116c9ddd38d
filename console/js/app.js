// app.js — the console's shell: the session, the navigation by role, the
// hash router (#/page/arg) and the sign-in, second-factor and invitation
// screens. Pages live in pages/*.js; each exports {title, perm, render}.
// render(main, params, ctx) may return a function that stops what it
// started (polling), called when the page is left.
import { h, replace } from './dom.js';
import { api, get, post, setCsrf, whenSignedOut } from './api.js';
import { t, lang, setLang, money } from './i18n.js';
import { errorText, form, field, input, notice } from './ui.js';
import overview from './pages/overview.js';
import messages from './pages/messages.js';
import keys from './pages/keys.js';
import webhooks from './pages/webhooks.js';
import contacts from './pages/contacts.js';
import campaigns from './pages/campaigns.js';
import otp from './pages/otp.js';
import billing from './pages/billing.js';
import invoice from './pages/invoice.js';
import team from './pages/team.js';
import profile from './pages/profile.js';
import operator from './pages/operator.js';

const pages = { overview, messages, keys, webhooks, contacts, campaigns, otp, billing, invoice, team, profile, operator };
const nav = ['overview', 'messages', 'campaigns', 'contacts', 'keys', 'webhooks', 'otp', 'billing', 'team', 'operator'];
// "Signed in here before": only a hint to skip a request bound to fail (no secret).
const HINT = 'envoisms.signed_in';

const root = document.getElementById('app');
let session = null;
let leave = null;

function can(page) {
  const p = pages[page];
  if (!session || !p) return false;
  if (p.operator) return !!session.operator;
  if (p.owner) return session.role === 'owner';
  if (!p.perm) return true;
  const need = Array.isArray(p.perm) ? p.perm : [p.perm];
  return need.some((x) => (session.permissions || []).includes(x));
}

function route() {
  const hash = location.hash.startsWith('#/') ? location.hash.slice(2) : '';
  const [path, qs] = hash.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { page: parts[0] || '', args: parts.slice(1), params: new URLSearchParams(qs || '') };
}

export function navigate(path) {
  if (location.hash === '#' + path) render();
  else location.hash = path;
}

const ctx = {
  get session() { return session; },
  navigate,
  can,
  async refresh() {
    session = await get('/v1/console/session');
    setCsrf(session.csrf_token);
    updateHeader();
    return session;
  },
};

function langSwitch() {
  const other = lang() === 'fr' ? 'en' : 'fr';
  return h('button', {
    type: 'button', class: 'btn btn-ghost lang', lang: other,
    'aria-label': t('shell.switch_language'),
    onclick: () => { setLang(other); start(); },
  }, other === 'en' ? 'English' : 'Français');
}

let balanceEl = null;
function updateHeader() {
  if (balanceEl && session) {
    replace(balanceEl, money(session.account.balance_mad, 'MAD'), h('span', { class: 'muted' }, ' · ', money(session.account.balance_eur, 'EUR')));
  }
}

function shell() {
  const main = h('main', { id: 'main', tabindex: '-1' });
  const menu = h('nav', { id: 'nav', class: 'nav', 'aria-label': t('shell.navigation') },
    h('ul', {}, nav.filter(can).map((p) => h('li', {}, h('a', { href: '#/' + p, 'data-page': p }, t('nav.' + p))))));
  const toggle = h('button', { type: 'button', class: 'btn btn-ghost menu-toggle', 'aria-controls': 'nav', 'aria-expanded': 'false' }, t('shell.menu'));
  toggle.addEventListener('click', () => {
    const open = toggle.getAttribute('aria-expanded') !== 'true';
    toggle.setAttribute('aria-expanded', String(open));
    menu.classList.toggle('open', open);
  });
  menu.addEventListener('click', (ev) => {
    if (ev.target.closest('a')) { toggle.setAttribute('aria-expanded', 'false'); menu.classList.remove('open'); }
  });
  balanceEl = h('span', { class: 'balance', title: t('shell.balance') });
  updateHeader();
  const header = h('header', { class: 'top' },
    toggle,
    h('a', { class: 'brand', href: '#/overview' }, 'envoisms'),
    h('span', { class: 'account' }, session.account.name),
    balanceEl,
    h('div', { class: 'top-right' },
      langSwitch(),
      h('a', { class: 'btn btn-ghost', href: '#/profile' }, session.user.name || session.user.email),
      h('button', { type: 'button', class: 'btn btn-ghost', onclick: signOut }, t('shell.sign_out'))));
  replace(root, header, h('div', { class: 'layout' }, menu, main));
  return main;
}

async function render() {
  if (leave) { try { leave(); } catch (e) { /* the page is gone anyway */ } leave = null; }
  const r = route();
  if (r.page === 'accept') return acceptScreen(r.args[0] || '');
  if (!session) return signInScreen();
  let main = document.getElementById('main');
  if (!main) main = shell();
  let page = r.page || 'overview';
  if (!pages[page] || !can(page)) page = nav.find(can) || 'profile';
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.page === page || (page === 'invoice' && a.dataset.page === 'billing')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${t('nav.' + page)} · envoisms`;
  replace(main, h('p', { class: 'loading' }, t('common.loading')));
  try {
    const stop = await pages[page].render(main, r, ctx);
    if (typeof stop === 'function') leave = stop;
  } catch (err) {
    if (err && err.status === 401) return;
    replace(main, notice('error', errorText(err)));
    if (!(err && err.status)) console.warn(err);
  }
  const h1 = main.querySelector('h1');
  if (h1 && document.activeElement === document.body) h1.focus({ preventScroll: true });
}

async function signOut() {
  try { await post('/v1/console/sign-out'); } catch (e) { /* signed out either way */ }
  forget();
  location.hash = '#/';
  start();
}

function forget() {
  session = null;
  setCsrf(null);
  localStorage.removeItem(HINT);
}

function signedIn(s) {
  session = s;
  setCsrf(s.csrf_token);
  localStorage.setItem(HINT, '1');
  root.textContent = '';
  if (!location.hash.startsWith('#/') || location.hash.startsWith('#/accept')) location.hash = '#/overview';
  render();
}

function authFrame(title, ...body) {
  replace(root, h('main', { id: 'main', class: 'auth', tabindex: '-1' },
    h('div', { class: 'auth-box' },
      h('div', { class: 'auth-top' }, h('span', { class: 'brand' }, 'envoisms'), langSwitch()),
      h('h1', {}, title), body)));
  document.title = `${title} · envoisms`;
  const first = root.querySelector('input');
  if (first) first.focus();
}

function signInScreen() {
  const email = input({ type: 'email', name: 'email', autocomplete: 'username', required: true });
  const password = input({ type: 'password', name: 'password', autocomplete: 'current-password', required: true });
  authFrame(t('signin.title'),
    form([field(t('signin.email'), email), field(t('signin.password'), password)], t('signin.submit'), async () => {
      const answer = await post('/v1/console/sign-in', { email: email.value.trim(), password: password.value });
      if (answer.second_factor === 'required') return secondFactorScreen(answer);
      signedIn(answer);
      return null;
    }),
    h('p', { class: 'muted small' }, t('signin.help')));
}

function secondFactorScreen(challenge) {
  const code = input({ name: 'code', inputmode: 'numeric', autocomplete: 'one-time-code', pattern: '[0-9]*', maxlength: '10', required: true });
  authFrame(t('signin.second_factor'),
    h('p', {}, t('signin.code_sent', { channel: t('channel.' + challenge.channel), to: challenge.to })),
    form([field(t('signin.code'), code)], t('signin.verify'), async () => {
      const s = await post('/v1/console/sign-in/verify', { challenge_id: challenge.challenge_id, code: code.value.trim() });
      signedIn(s);
      return null;
    }),
    h('p', {}, h('a', { href: '#/', onclick: (ev) => { ev.preventDefault(); signInScreen(); } }, t('signin.back'))));
}

function acceptScreen(token) {
  const name = input({ name: 'name', autocomplete: 'name', required: true });
  const password = input({ type: 'password', name: 'password', autocomplete: 'new-password', minlength: '10', required: true });
  const phone = input({ type: 'tel', name: 'phone', autocomplete: 'tel', placeholder: '+2126…' });
  authFrame(t('accept.title'),
    h('p', {}, t('accept.intro')),
    form([field(t('profile.name'), name), field(t('signin.password'), password, t('accept.password_hint')),
      field(t('profile.phone'), phone, t('common.optional'))], t('accept.submit'), async () => {
      const body = { token, name: name.value.trim(), password: password.value };
      if (phone.value.trim()) body.phone = phone.value.trim();
      signedIn(await post('/v1/console/invitations/accept', body));
      return null;
    }));
}

async function start() {
  if (leave) { try { leave(); } catch (e) { /* gone */ } leave = null; }
  root.textContent = '';
  if (!session && localStorage.getItem(HINT) && !location.hash.startsWith('#/accept')) {
    try {
      session = await get('/v1/console/session');
      setCsrf(session.csrf_token);
    } catch (err) {
      forget();
      if (err.status !== 401) {
        replace(root, h('main', { id: 'main' }, notice('error', errorText(err))));
        return;
      }
    }
  }
  render();
}

whenSignedOut(() => {
  if (!session) return;
  forget();
  render();
});
window.addEventListener('hashchange', () => { if (location.hash.startsWith('#/') || location.hash === '') render(); });
document.addEventListener('click', (ev) => {
  const skip = ev.target.closest('a.skip');
  if (skip) {
    ev.preventDefault();
    const main = document.getElementById('main');
    if (main) main.focus();
  }
});
start();
