// Contacts and lists: search, add, delete, create lists, and a CSV import
// read in the browser and sent in batches to POST /v1/contacts/import, its
// progress shown batch by batch. Names and custom fields are shown as text.
import { h, replace } from '../dom.js';
import { get, post, del, query } from '../api.js';
import { t, date, num } from '../i18n.js';
import { pageHeader, card, table, form, field, input, select, button, pager, outcome } from '../ui.js';
import { csvContacts } from '../csv.js';

const LIMIT = 50;
const BATCH = 500;

export default {
  perm: ['contacts'],
  async render(main, r, ctx) {
    const offset = Math.max(0, Number(r.params.get('offset')) || 0);
    const q = r.params.get('q') || '';
    const listId = r.params.get('list_id') || '';
    const [page, lists] = await Promise.all([
      get('/v1/contacts', { q, list_id: listId, limit: LIMIT, offset }),
      get('/v1/contacts/lists'),
    ]);
    const listOptions = [['', t('contacts.no_list')], ...(lists.data || []).map((l) => [l.id, `${l.name} (${num(l.count, 0)})`])];
    const canWrite = ctx.session.role !== 'viewer';

    const search = input({ type: 'search', name: 'q', value: q, placeholder: t('contacts.search_placeholder') });
    const filterList = select([['', t('common.all')], ...listOptions.slice(1)], { name: 'list_id' });
    filterList.value = listId;
    const searchForm = h('form', { class: 'filters', role: 'search' }, field(t('contacts.search'), search), field(t('contacts.list'), filterList),
      h('div', { class: 'form-actions' }, h('button', { class: 'btn btn-primary', type: 'submit' }, t('messages.search'))));
    searchForm.addEventListener('submit', (ev) => { ev.preventDefault(); location.hash = '#/contacts' + query({ q: search.value.trim(), list_id: filterList.value }); });

    const rows = table([
      { label: t('contacts.name'), value: (c) => c.name ?? '' },
      { label: t('contacts.phone'), value: (c) => c.phone },
      { label: t('contacts.email'), value: (c) => c.email ?? '' },
      { label: t('contacts.custom'), value: (c) => [c.custom1, c.custom2, c.custom3].filter(Boolean).join(' · ') },
      { label: t('common.created'), value: (c) => date(c.created_at, false) },
      { label: t('common.actions'), value: (c) => (canWrite ? button(t('common.delete'), async () => { await del('/v1/contacts/' + encodeURIComponent(c.id)); ctx.navigate('/contacts' + query({ q, list_id: listId })); },
        { class: 'btn-small btn-danger', confirm: t('contacts.delete_confirm'), aria: `${t('common.delete')} ${c.phone}` }) : '') },
    ], page.data, { empty: t('contacts.none'), label: t('nav.contacts') });

    const parts = [pageHeader(t('nav.contacts')), card(null, searchForm),
      card(t('contacts.results', { n: num(page.total ?? page.data.length, 0) }), rows,
        pager(page.total, LIMIT, offset, (o) => { location.hash = '#/contacts' + query({ q, list_id: listId, offset: o }); }))];

    if (canWrite) {
      const phone = input({ type: 'tel', name: 'phone', required: true, placeholder: '+212612345678' });
      const name = input({ name: 'name', autocomplete: 'off' });
      const email = input({ type: 'email', name: 'email', autocomplete: 'off' });
      const inList = select(listOptions, { name: 'list_id' });
      const add = form([field(t('contacts.phone'), phone), field(t('contacts.name'), name), field(t('contacts.email'), email), field(t('contacts.list'), inList)],
        t('contacts.add'), async () => {
          const body = { phone: phone.value.trim() };
          if (name.value.trim()) body.name = name.value.trim();
          if (email.value.trim()) body.email = email.value.trim();
          if (inList.value) body.list_id = inList.value;
          await post('/v1/contacts', body);
          ctx.navigate('/contacts' + query({ q, list_id: listId }));
          return null;
        });

      const listName = input({ name: 'list_name', required: true });
      const listDesc = input({ name: 'description' });
      const newList = form([field(t('contacts.list_name'), listName), field(t('contacts.description'), listDesc)], t('contacts.create_list'), async () => {
        const l = await post('/v1/contacts/lists', { name: listName.value.trim(), description: listDesc.value.trim() || undefined });
        ctx.navigate('/contacts' + query({ list_id: l.id }));
        return null;
      });

      const file = h('input', { type: 'file', name: 'csv', accept: '.csv,text/csv', required: true });
      const importList = select(listOptions, { name: 'import_list' });
      const progress = h('progress', { max: '1', value: '0', 'aria-label': t('contacts.import_progress') });
      const progressText = h('span', { class: 'muted', 'aria-live': 'polite' });
      const result = outcome();
      const importForm = form([field(t('contacts.csv_file'), file, t('contacts.csv_hint')), field(t('contacts.list'), importList),
        h('div', { class: 'progress-row' }, progress, progressText)], t('contacts.import'), async () => {
        if (!file.files[0]) throw new Error(t('contacts.pick_file'));
        const contacts = csvContacts(await file.files[0].text());
        if (contacts.length === 0) throw new Error(t('contacts.csv_empty'));
        let imported = 0;
        let skipped = 0;
        progress.max = contacts.length;
        for (let i = 0; i < contacts.length; i += BATCH) {
          const body = { contacts: contacts.slice(i, i + BATCH) };
          if (importList.value) body.list_id = importList.value;
          const res = await post('/v1/contacts/import', body);
          imported += res.imported || 0;
          skipped += res.skipped || 0;
          progress.value = Math.min(contacts.length, i + BATCH);
          progressText.textContent = t('contacts.import_status', { done: num(progress.value, 0), total: num(contacts.length, 0) });
        }
        result.show(t('contacts.imported', { imported: num(imported, 0), skipped: num(skipped, 0) }), 'ok');
        return null;
      });
      parts.push(h('div', { class: 'grid2' }, card(t('contacts.new'), add), card(t('contacts.new_list'), newList)),
        card(t('contacts.import_title'), importForm, result));
    }
    parts.push(card(t('contacts.lists'), table([
      { label: t('contacts.list_name'), value: (l) => h('a', { href: '#/contacts' + query({ list_id: l.id }) }, l.name) },
      { label: t('contacts.description'), value: (l) => l.description ?? '' },
      { label: t('contacts.members'), class: 'num', value: (l) => num(l.count, 0) },
      { label: t('common.created'), value: (l) => date(l.created_at, false) },
    ], lists.data, { empty: t('contacts.no_lists'), label: t('contacts.lists') })));
    replace(main, ...parts);
  },
};
