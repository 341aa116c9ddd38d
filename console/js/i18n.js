// i18n.js — French first, English on a switch. Strings live in
// i18n/fr.js and i18n/en.js (one flat object each, the same keys); the
// choice is remembered in localStorage (a preference, not a secret).
// Numbers, money and dates are formatted by Intl for the language.
import fr from '../i18n/fr.js';
import en from '../i18n/en.js';

const tables = { fr, en };
let current = localStorage.getItem('envoisms.lang') === 'en' ? 'en' : 'fr';

export function lang() {
  return current;
}

export function setLang(code) {
  current = code === 'en' ? 'en' : 'fr';
  localStorage.setItem('envoisms.lang', current);
  document.documentElement.lang = current;
}

// t('key', {n: 3}) — "{n}" placeholders replaced; a missing key shows itself.
export function t(key, vars) {
  const text = tables[current][key] ?? tables.fr[key] ?? key;
  return vars ? text.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m)) : text;
}

const locale = () => (current === 'fr' ? 'fr-MA' : 'en-GB');

export function num(n, digits) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return '—';
  return new Intl.NumberFormat(locale(), { maximumFractionDigits: digits ?? 2 }).format(Number(n));
}

export function money(n, currency) {
  if (n === null || n === undefined) return '—';
  return new Intl.NumberFormat(locale(), {
    style: 'currency', currency: currency || 'MAD', minimumFractionDigits: 2, maximumFractionDigits: 4,
  }).format(Number(n));
}

export function pct(rate) {
  if (rate === null || rate === undefined) return '—';
  return new Intl.NumberFormat(locale(), { style: 'percent', maximumFractionDigits: 1 }).format(Number(rate));
}

export function date(iso, withTime = true) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return new Intl.DateTimeFormat(locale(), withTime
    ? { dateStyle: 'medium', timeStyle: 'medium', timeZone: 'UTC' }
    : { dateStyle: 'medium', timeZone: 'UTC' }).format(d) + (withTime ? ' UTC' : '');
}

export function seconds(s) {
  if (s === null || s === undefined) return '—';
  return s < 60 ? t('unit.seconds', { n: num(s, 1) }) : t('unit.minutes', { n: num(s / 60, 1) });
}

document.documentElement.lang = current;
