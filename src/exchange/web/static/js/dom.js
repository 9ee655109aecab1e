// Tiny DOM helpers: elements are built with textContent, never innerHTML.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

const pad = (n) => String(n).padStart(2, '0');

export function fmtTime(ms) {
  if (ms === undefined || ms === null || ms === '') return '–';
  const d = new Date(Number(ms));
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtDate(ms) {
  const d = new Date(Number(ms));
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

export function fmtDateTime(ms) {
  if (ms === undefined || ms === null || ms === '') return '–';
  return `${fmtDate(ms)} ${fmtTime(ms)}`;
}

// Date and time for tables; the date part is hidden on narrow screens (class .date).
export function dateTimeNode(ms) {
  if (ms === undefined || ms === null || ms === '') return '–';
  const span = document.createElement('span');
  const date = document.createElement('span');
  date.className = 'date';
  date.textContent = `${fmtDate(ms)} `;
  span.append(date, fmtTime(ms));
  span.title = fmtDateTime(ms);
  return span;
}

// "+1.25" / "-0.40" / "0.00" -> a class for green / red / neutral.
export function changeClass(change) {
  const s = String(change ?? '');
  if (s.startsWith('-')) return 'down';
  if (s === '' || /^\+?0*(\.0*)?$/.test(s)) return 'flat';
  return 'up';
}

export function fmtChange(change) {
  if (change === undefined || change === null) return '–';
  const s = String(change);
  return `${/^[+-]/.test(s) || changeClass(s) === 'flat' ? '' : '+'}${s} %`;
}

export function fillTable(table, rows, emptyText) {
  const body = table.tBodies[0];
  if (!rows.length && emptyText) {
    const cols = table.tHead ? table.tHead.rows[0].cells.length : 1;
    body.replaceChildren(el('tr', { class: 'empty' }, el('td', { colspan: cols }, emptyText)));
  } else {
    body.replaceChildren(...rows);
  }
}

// Pair slug for URLs: "BTC/USDT" -> "BTC_USDT".
export const slug = (pair) => String(pair).replace('/', '_');
