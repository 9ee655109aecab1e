// Home: the rank list with sparklines, refreshed by polling and the ticker stream.
import { api, showError, clearMessage, ROOT } from './api.js';
import { el, fmtChange, changeClass, fmtTime, slug } from './dom.js';
import { trimZeros } from './dec.js';
import { sparkline } from './spark.js';
import { Live } from './live.js';

const body = document.getElementById('rank-body');
const updated = document.getElementById('rank-updated');
const sparks = new Map();        // pair -> {points, at}
let rows = [];

function row(m) {
  return el('tr', { class: 'rank-row', dataset: { pair: m.pair } },
    el('td', { class: 'rank-no' }, m.rank),
    el('td', {}, el('a', { href: `${ROOT}/trade/${slug(m.pair)}` }, m.pair)),
    el('td', { class: 'num mono price' }, m.price ?? '–'),
    el('td', { class: `num mono change ${changeClass(m.change_percent)}` }, fmtChange(m.change_percent)),
    el('td', { class: 'num mono volume hide-sm' }, trimZeros(m.volume_24h)),
    el('td', { class: 'spark-col' }, sparks.has(m.pair) ? sparkline(sparks.get(m.pair).points, changeClass(m.change_percent)) : ''),
  );
}

function render() {
  body.replaceChildren(...rows.map(row));
  updated.textContent = `Updated ${fmtTime(Date.now())}`;
}

// The whole row opens the market (the pair's link still works with modifier keys).
body.addEventListener('click', (ev) => {
  const tr = ev.target.closest('tr.rank-row');
  if (!tr || ev.target.closest('a') || ev.defaultPrevented) return;
  location.href = `${ROOT}/trade/${slug(tr.dataset.pair)}`;
});

async function loadSparks() {
  const now = Date.now();
  await Promise.all(rows.map(async (m) => {
    const cached = sparks.get(m.pair);
    if (cached && now - cached.at < 60000) return;
    try {
      sparks.set(m.pair, { points: await api('get_simple_k_line', { pair: m.pair }), at: now });
    } catch { /* a missing sparkline is not worth a message */ }
  }));
}

async function refresh() {
  try {
    rows = await api('get_rank');
    clearMessage();
    render();
    await loadSparks();
    render();
  } catch (err) {
    showError(err);
  }
}

const live = new Live({
  onEvent(msg) {
    if (msg.channel !== 'ticker' || !msg.data) return;
    const i = rows.findIndex((m) => m.pair === msg.pair);
    if (i < 0) return;
    rows[i] = { ...rows[i], ...msg.data, rank: rows[i].rank };
    render();
  },
});

await refresh();
for (const m of rows) live.subscribe('ticker', m.pair);
live.connect();
setInterval(refresh, 5000);
