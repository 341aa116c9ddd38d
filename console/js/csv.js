// csv.js — RFC 4180 CSV read in the browser for the contacts import:
// quoted fields, doubled quotes, CRLF or LF, a comma or semicolon separator
// (what a French spreadsheet writes), a header row naming the columns.

export function parseCsv(text) {
  const sep = (text.split('\n')[0].match(/;/g) || []).length > (text.split('\n')[0].match(/,/g) || []).length ? ';' : ',';
  const rows = [];
  let row = [];
  let cell = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { cell += '"'; i++; } else if (c === '"') quoted = false; else cell += c;
    } else if (c === '"' && cell === '') quoted = true;
    else if (c === sep) { row.push(cell); cell = ''; } else if (c === '\n' || c === '\r') {
      if (c === '\r' && text[i + 1] === '\n') i++;
      row.push(cell); cell = '';
      if (row.some((x) => x.trim() !== '')) rows.push(row);
      row = [];
    } else cell += c;
  }
  row.push(cell);
  if (row.some((x) => x.trim() !== '')) rows.push(row);
  return rows;
}

// Rows to contacts: the header names phone/téléphone, name/nom, email,
// custom1..3; without a header, the columns are phone, name, email.
export function csvContacts(text) {
  const rows = parseCsv(text.replace(/^\uFEFF/, ''));
  if (rows.length === 0) return [];
  const names = rows[0].map((x) => x.trim().toLowerCase());
  const alias = { phone: 'phone', 'téléphone': 'phone', telephone: 'phone', tel: 'phone', mobile: 'phone', name: 'name', nom: 'name', email: 'email', 'e-mail': 'email', custom1: 'custom1', custom2: 'custom2', custom3: 'custom3' };
  const header = names.some((n) => alias[n] === 'phone');
  const cols = header ? names.map((n) => alias[n] || null) : ['phone', 'name', 'email'];
  return rows.slice(header ? 1 : 0).map((r) => {
    const c = {};
    const custom = {};
    cols.forEach((k, i) => {
      const v = (r[i] || '').trim();
      if (!k || !v) return;
      if (k.startsWith('custom')) custom[k] = v; else c[k] = v;
    });
    if (Object.keys(custom).length) c.custom_fields = custom;
    return c;
  }).filter((c) => c.phone);
}
