// Campaigns and templates: create a template, create a campaign (now or
// scheduled, optional throttling), send it, and watch its live progress:
// the campaign and its counts (queued / sent / delivered / failed, from
// GET /v1/console/campaigns/:id/progress) polled every second while it
// runs, drawn as one stacked bar; 100% is every message in a final state.
import { h, replace } from '../dom.js';
import { get, post } from '../api.js';
import { t, date, num, pct } from '../i18n.js';
import { pageHeader, card, table, badge, form, field, input, select, button, dl, outcome } from '../ui.js';

const POLL_MS = 1000;

async function list(main, r, ctx) {
  const [campaigns, templates, lists] = await Promise.all([get('/v1/campaigns'), get('/v1/templates'), get('/v1/contacts/lists')]);
  const canWrite = ctx.session.role !== 'viewer';
  const parts = [pageHeader(t('nav.campaigns')),
    card(t('campaigns.list'), table([
      { label: t('campaigns.name'), value: (c) => h('a', { href: '#/campaigns/' + encodeURIComponent(c.id) }, c.name) },
      { label: t('common.channel'), value: (c) => t('channel.' + c.channel) },
      { label: t('common.status'), value: (c) => badge(c.status) },
      { label: t('campaigns.scheduled'), value: (c) => date(c.scheduled_at) },
      { label: t('common.created'), value: (c) => date(c.created_at) },
    ], campaigns.data, { empty: t('campaigns.none'), label: t('campaigns.list') }))];
  if (canWrite) {
    const name = input({ name: 'name', required: true, maxlength: '200' });
    const body = h('textarea', { name: 'body', rows: '3', maxlength: '1600', placeholder: t('campaigns.body_placeholder') });
    const tpl = select([['', t('campaigns.no_template')], ...(templates.data || []).map((x) => [x.id, x.name])], { name: 'template_id' });
    const channel = select([['sms', 'SMS'], ['whatsapp', 'WhatsApp']], { name: 'channel' });
    const list = select((lists.data || []).map((l) => [l.id, `${l.name} (${num(l.count, 0)})`]), { name: 'list_id', required: true });
    const sender = input({ name: 'sender_id', maxlength: '11', placeholder: 'ENVOISMS' });
    const when = input({ name: 'scheduled_at', type: 'datetime-local' });
    const throttle = input({ name: 'throttling', placeholder: '50_min' });
    const create = form([field(t('campaigns.name'), name), field(t('campaigns.body'), body, t('campaigns.body_hint')), field(t('campaigns.template'), tpl),
      field(t('common.channel'), channel), field(t('campaigns.list_field'), list), field(t('campaigns.sender'), sender),
      field(t('campaigns.scheduled_at'), when, t('campaigns.scheduled_hint')), field(t('campaigns.throttling'), throttle, t('campaigns.throttling_hint'))],
    t('campaigns.create'), async () => {
      const b = { name: name.value.trim(), channel: channel.value, list_id: list.value || undefined };
      if (tpl.value) b.template_id = tpl.value; else b.body = body.value;
      if (sender.value.trim()) b.sender_id = sender.value.trim();
      if (when.value) b.scheduled_at = new Date(when.value).toISOString().replace(/\.\d+Z$/, 'Z');
      if (throttle.value.trim()) b.metadata = { throttling: throttle.value.trim() };
      const c = await post('/v1/campaigns', b);
      ctx.navigate('/campaigns/' + encodeURIComponent(c.id));
      return null;
    });
    const tname = input({ name: 'template_name', required: true });
    const tbody = h('textarea', { name: 'template_body', rows: '3', required: true, maxlength: '1600' });
    const newTpl = form([field(t('campaigns.template_name'), tname), field(t('campaigns.body'), tbody)], t('campaigns.create_template'), async () => {
      await post('/v1/templates', { name: tname.value.trim(), body: tbody.value });
      ctx.navigate('/campaigns');
      return null;
    });
    parts.push(h('div', { class: 'grid2' }, card(t('campaigns.new'), create), card(t('campaigns.new_template'), newTpl)));
  }
  parts.push(card(t('campaigns.templates'), table([
    { label: t('campaigns.template_name'), value: (x) => x.name },
    { label: t('common.channel'), value: (x) => t('channel.' + x.channel) },
    { label: t('campaigns.body'), class: 'body-cell', value: (x) => x.body },
    { label: t('common.status'), value: (x) => badge(x.status) },
  ], templates.data, { empty: t('campaigns.no_templates'), label: t('campaigns.templates') })));
  replace(main, ...parts);
}

// The counts of a campaign: the progress route's "counts", else total/sent.
function counts(c) {
  const total = c.total_count || 0;
  if (c.counts) return { total, ...c.counts };
  return { total, sent: c.sent_count || 0, queued: Math.max(0, total - (c.sent_count || 0)) };
}

function progressView(c) {
  const k = counts(c);
  const done = (k.delivered || 0) + (k.failed || 0) + (k.expired || 0);
  const handled = c.counts ? done : (k.sent || 0);
  const ratio = k.total ? handled / k.total : 0;
  const bar = h('div', { class: 'stack', role: 'img', 'aria-label': t('campaigns.progress_label', { pct: pct(ratio) }) });
  for (const s of ['delivered', 'sent', 'failed', 'expired', 'queued']) {
    if (!k[s]) continue;
    const seg = h('div', { class: 'stack-' + s, title: `${t('status.' + s)}: ${k[s]}` });
    seg.style.width = `${(100 * k[s]) / Math.max(1, k.total)}%`;
    bar.append(seg);
  }
  return h('div', { class: 'progress-block' },
    h('div', { class: 'progress-head' }, h('strong', { class: 'progress-pct', 'data-pct': String(Math.round(ratio * 100)) }, pct(ratio)),
      h('span', { class: 'muted' }, t('campaigns.of_total', { n: num(k.total, 0) }))),
    bar,
    h('ul', { class: 'legend' }, ['queued', 'sent', 'delivered', 'failed'].map((s) =>
      h('li', { 'data-status': s }, h('span', { class: 'swatch stack-' + s }), `${t('status.' + s)} `, h('strong', { class: 'count' }, num(k[s] || 0, 0))))));
}

// The campaign with its live counts (GET /v1/console/campaigns/:id/progress).
async function load(id) {
  const [c, progress] = await Promise.all([get('/v1/campaigns/' + encodeURIComponent(id)),
    get(`/v1/console/campaigns/${encodeURIComponent(id)}/progress`)]);
  return { ...c, status: progress.status || c.status, total_count: progress.total_count ?? c.total_count, counts: progress.counts };
}

async function detail(main, id, ctx) {
  let c = await load(id);
  let timer = null;
  let stopped = false;
  const progressSlot = h('div', { 'aria-live': 'off' });
  const facts = h('div');
  const said = outcome();
  const actions = h('div', { class: 'actions' });
  function paint() {
    replace(progressSlot, progressView(c));
    replace(facts, dl([
      [t('common.status'), badge(c.status)],
      [t('common.channel'), t('channel.' + c.channel)],
      [t('campaigns.list_field'), c.list_id ? h('a', { href: '#/contacts?list_id=' + encodeURIComponent(c.list_id) }, c.list_id) : '—'],
      [t('campaigns.sender'), c.sender_id],
      [t('campaigns.scheduled'), date(c.scheduled_at)],
      [t('campaigns.started'), date(c.started_at)],
      [t('campaigns.completed'), date(c.completed_at)],
      c.error ? [t('messages.failure'), `${c.error.code}: ${c.error.message}`] : null,
      [t('campaigns.messages'), h('a', { href: '#/messages?campaign_id=' + encodeURIComponent(c.id) }, t('campaigns.see_messages'))],
    ]));
    const canSend = ctx.session.role !== 'viewer' && (c.status === 'draft' || c.status === 'scheduled');
    replace(actions, canSend ? button(t('campaigns.send_now'), async () => {
      try {
        await post(`/v1/campaigns/${encodeURIComponent(c.id)}/send`);
        said.show(t('campaigns.launched'), 'ok');
      } catch (err) { said.show(err); }
      await poll();
    }, { class: 'btn-primary', confirm: t('campaigns.send_confirm') }) : null, h('a', { class: 'btn', href: '#/campaigns' }, t('common.back')));
  }
  async function poll() {
    clearTimeout(timer);
    if (stopped) return;
    c = await load(id);
    paint();
    const k = counts(c);
    const live = c.status === 'running' || c.status === 'sending' || c.status === 'scheduled' ||
      (c.counts ? (k.queued || 0) + (k.sent || 0) > 0 : false);
    if (live && !stopped) timer = setTimeout(() => poll().catch(() => {}), POLL_MS);
  }
  paint();
  replace(main, pageHeader(c.name, actions), said,
    h('div', { class: 'grid2' }, card(t('campaigns.progress'), progressSlot), card(t('messages.details'), facts)),
    card(t('campaigns.body'), h('pre', { class: 'body' }, c.body ?? '')));
  await poll();
  return () => { stopped = true; clearTimeout(timer); };
}

export default {
  perm: ['campaigns'],
  render(main, r, ctx) {
    return r.args[0] ? detail(main, r.args[0], ctx) : list(main, r, ctx);
  },
};
