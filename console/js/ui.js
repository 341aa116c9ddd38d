// ui.js — the console's small widgets: tables, status badges, error and
// success notices, copy buttons, pagination, cards. Everything is built
// with dom.js, so every value shown is text.
import { h, replace, field } from './dom.js';
import { t, num } from './i18n.js';

export function pageHeader(title, ...actions) {
  return h('div', { class: 'page-head' }, h('h1', { tabindex: '-1' }, title), h('div', { class: 'actions' }, actions));
}

export function card(title, ...body) {
  return h('section', { class: 'card' }, title ? h('h2', {}, title) : null, body);
}

export function stat(label, value, sub) {
  return h('div', { class: 'stat' }, h('div', { class: 'stat-label' }, label),
    h('div', { class: 'stat-value' }, value), sub ? h('div', { class: 'stat-sub' }, sub) : null);
}

// columns: [{label, value: row => text|Node, class?}]
export function table(columns, rows, opts = {}) {
  if (!rows || rows.length === 0) return h('p', { class: 'empty' }, opts.empty || t('common.empty'));
  return h('div', { class: 'table-wrap', role: 'region', 'aria-label': opts.label || '', tabindex: '0' },
    h('table', {},
      opts.caption ? h('caption', {}, opts.caption) : null,
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.class }, c.label)))),
      h('tbody', {}, rows.map((r) => h('tr', {}, columns.map((c) => h('td', { class: c.class, 'data-label': c.label }, c.value(r))))))));
}

const tones = {
  delivered: 'ok', verified: 'ok', active: 'ok', completed: 'ok', sent: 'info', running: 'info',
  queued: 'wait', pending: 'wait', scheduled: 'wait', draft: 'muted', failed: 'bad', expired: 'bad',
  cancelled: 'muted', suspended: 'bad', revoked: 'muted', closed: 'muted', bound: 'ok', unbound: 'bad',
};

export function badge(status) {
  const s = status === null || status === undefined ? '—' : String(status);
  return h('span', { class: 'badge badge-' + (tones[s] || 'muted') }, t('status.' + s) === 'status.' + s ? s : t('status.' + s));
}

export function errorText(err) {
  if (!err) return '';
  if (err.code === 'RATE_LIMITED' && err.retryAfter) return t('error.rate_limited', { s: err.retryAfter });
  const known = t('error.' + err.code);
  const base = known === 'error.' + err.code ? err.message : known;
  return err.field ? `${base} (${err.field})` : base;
}

export function notice(kind, text) {
  return h('div', { class: 'notice notice-' + kind, role: kind === 'error' ? 'alert' : 'status' }, text);
}

// A place for a form's outcome: .show(err|text, kind)
export function outcome() {
  const el = h('div', { class: 'outcome' });
  el.show = (what, kind) => replace(el, what ? notice(kind || (what instanceof Error ? 'error' : 'ok'),
    what instanceof Error ? errorText(what) : what) : null);
  return el;
}

export function copyButton(getText, label) {
  const btn = h('button', { type: 'button', class: 'btn btn-small' }, label || t('common.copy'));
  btn.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(getText());
      btn.textContent = t('common.copied');
    } catch (e) {
      btn.textContent = t('common.copy_failed');
    }
    setTimeout(() => { btn.textContent = label || t('common.copy'); }, 2000);
  });
  return btn;
}

export function button(label, onClick, opts = {}) {
  const btn = h('button', { type: opts.submit ? 'submit' : 'button', class: 'btn ' + (opts.class || ''), 'aria-label': opts.aria }, label);
  if (onClick) {
    btn.addEventListener('click', async (ev) => {
      if (opts.confirm && !window.confirm(opts.confirm)) return;
      btn.disabled = true;
      try { await onClick(ev); } finally { btn.disabled = false; }
    });
  }
  return btn;
}

export function input(attrs) {
  return h('input', { type: 'text', ...attrs });
}

export function select(options, attrs) {
  return h('select', attrs || {}, options.map(([value, label]) => h('option', { value }, label)));
}

export function checkboxes(name, values, checked, labelOf) {
  return h('fieldset', { class: 'checks' }, h('legend', {}, name),
    values.map((v) => h('label', { class: 'check' },
      h('input', { type: 'checkbox', value: v, checked: checked.includes(v) }), ' ', labelOf ? labelOf(v) : v)));
}

export function checkedValues(fieldset) {
  return [...fieldset.querySelectorAll('input[type=checkbox]:checked')].map((i) => i.value);
}

// A form whose submit runs fn(values) with the button disabled; errors go to its outcome.
export function form(fields, submitLabel, fn, opts = {}) {
  const out = outcome();
  const submit = h('button', { type: 'submit', class: 'btn btn-primary' }, submitLabel);
  const el = h('form', { class: 'form ' + (opts.class || ''), novalidate: opts.novalidate }, fields, h('div', { class: 'form-actions' }, submit), out);
  el.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    out.show(null);
    try {
      const msg = await fn(el);
      if (msg) out.show(msg, 'ok');
    } catch (err) {
      out.show(err, 'error');
      if (!(err && err.status)) console.warn(err);
    } finally {
      submit.disabled = false;
    }
  });
  el.outcome = out;
  return el;
}

export { field };

export function pager(total, limit, offset, go) {
  const pages = Math.max(1, Math.ceil((total || 0) / limit));
  const page = Math.floor(offset / limit) + 1;
  const previous = button(t('common.previous'), () => go(Math.max(0, offset - limit)), { class: 'btn-small' });
  const next = button(t('common.next'), () => go(offset + limit), { class: 'btn-small' });
  previous.disabled = page <= 1;
  next.disabled = page >= pages;
  return h('nav', { class: 'pager', 'aria-label': t('common.pagination') },
    previous, h('span', {}, t('common.page_of', { page: num(page, 0), pages: num(pages, 0), total: num(total || 0, 0) })), next);
}

export function dl(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '—')]));
}
