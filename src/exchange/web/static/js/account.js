// Account: balances, withdrawal addresses, withdraw form, withdrawal history and API keys.
import { api, busy, showError, showMessage, ApiError, ROOT } from './api.js';
import { el, fmtDateTime, dateTimeNode, fillTable } from './dom.js';
import { isLoggedIn, setLoggedIn } from './nav.js';

const $id = (id) => document.getElementById(id);
const addressForm = $id('address-form');
const withdrawForm = $id('withdraw-form');
const keyForm = $id('key-form');
let coins = [];

function setCoins(list) {
  if (list.join() === coins.join()) return;
  coins = list;
  for (const select of document.querySelectorAll('.coin-select')) {
    const keep = select.value;
    select.replaceChildren(...coins.map((c) => el('option', { value: c }, c)));
    if (coins.includes(keep)) select.value = keep;
  }
}

async function loadBalances() {
  const map = await api('get_user_coin');
  setCoins(Object.keys(map).sort());
  fillTable($id('balances'), coins.map((c) => el('tr', { class: 'balance-row', dataset: { coin: c } },
    el('td', {}, c),
    el('td', { class: 'num mono available' }, map[c].available),
    el('td', { class: 'num mono frozen' }, map[c].frozen),
  )), 'No assets');
}

function usableText(ms) {
  if (ms === undefined || ms === null) return '–';
  return Number(ms) <= Date.now() ? 'now' : fmtDateTime(ms);
}

async function loadAddresses() {
  const rows = await Promise.all(coins.map((coin) => api('get_withdraw_address', { coin })));
  fillTable($id('addresses'), rows.map((a) => el('tr', { class: 'address-row', dataset: { coin: a.coin } },
    el('td', {}, a.coin),
    el('td', { class: 'mono address' }, a.address ?? el('span', { class: 'muted' }, 'not set')),
    el('td', { class: 'mono wrap', title: a.usable_from ? fmtDateTime(a.usable_from) : '' }, a.address ? usableText(a.usable_from) : '–'),
  )), 'No coins');
}

async function loadWithdrawals() {
  const list = await api('get_withdrawals');
  fillTable($id('withdrawals'), list.map((w) => el('tr', { class: 'withdrawal-row' },
    el('td', { class: 'mono hide-sm' }, w.withdrawal_id),
    el('td', { class: 'mono muted' }, dateTimeNode(w.created ?? w.time)),
    el('td', {}, w.coin),
    el('td', { class: 'num mono' }, w.amount),
    el('td', { class: 'num mono hide-sm' }, w.fee),
    el('td', { class: 'mono address' }, w.address),
    el('td', { title: w.txid || w.reason || '' }, w.status),
  )), 'No withdrawals yet');
}

async function loadKeys() {
  const keys = await api('get_api_keys');
  fillTable($id('keys'), keys.map((k) => el('tr', { class: 'key-row', dataset: { id: String(k.id) } },
    el('td', {}, k.label),
    el('td', { class: 'mono wrap', title: k.api_key }, `${k.api_key.slice(0, 12)}…`),
    el('td', {}, k.kind === 'ed25519' ? 'Ed25519' : 'HMAC'),
    el('td', { class: 'permissions' }, k.permissions.join(', ')),
    el('td', { class: 'mono hide-sm' }, k.ips.length ? k.ips.join(', ') : 'any'),
    el('td', { class: 'mono muted hide-sm' }, dateTimeNode(k.created)),
    el('td', {}, el('button', { type: 'button', class: 'btn small delete-key', dataset: { id: String(k.id) } }, 'Delete')),
  )), 'No API keys');
}

// What a user pastes into their tool: this server's URL, nothing else changed.
function showNewKey(k) {
  const api = `${window.location.origin}${ROOT}/api/v3`;
  const ws = `${window.location.origin.replace(/^http/, 'ws')}${ROOT}`;
  const streams = { spot: `${ws}/ws`, 'ws-api': { spot: `${ws}/ws-api/v3` } };
  const secret = k.secret ?? '<your Ed25519 private key (PEM)>';
  $id('new-key-key').textContent = k.api_key;
  $id('new-key-secret').textContent = k.secret ?? 'none: you keep the private key';
  $id('ccxt-snippet').textContent = [
    'import ccxt  # or ccxt.pro for the streams (watch_order_book, watch_orders...)',
    '',
    'exchange = ccxt.binance({',
    `    "apiKey": "${k.api_key}",`,
    `    "secret": "${secret}",`,
    `    "urls": {"api": {"public": "${api}", "private": "${api}", "sapi": "${api}",`,
    `                     "ws": ${JSON.stringify(streams)}}},`,
    '    "options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False, "fetchMargins": False},',
    '})',
  ].join('\n');
  const config = JSON.stringify({
    urls: { api: { public: api, private: api, sapi: api, ws: streams } },
    options: { fetchMarkets: { types: ['spot'] }, fetchCurrencies: false, fetchMargins: false },
  });
  $id('freqtrade-snippet').textContent = [
    '"exchange": {',
    '  "name": "binance",',
    `  "key": "${k.api_key}",`,
    `  "secret": "${secret}",`,
    `  "ccxt_config": ${config},`,
    `  "ccxt_async_config": ${config},`,
    '  "pair_whitelist": ["BTC/USDT", "ETH/USDT", "ETH/BTC"]',
    '}',
  ].join('\n');
  $id('new-key').hidden = false;
}

function loggedOut() {
  setLoggedIn(false);
  $id('login-hint').hidden = false;
  for (const id of ['balances', 'addresses', 'withdrawals', 'keys']) fillTable($id(id), [], 'Log in to see this');
}

async function refresh(withAddresses = false) {
  if (!isLoggedIn()) return loggedOut();
  try {
    await loadBalances();
    await Promise.all([
      loadWithdrawals(),
      withAddresses ? loadAddresses() : null,
      withAddresses ? loadKeys() : null,
    ]);
    $id('login-hint').hidden = true;
  } catch (err) {
    if (err instanceof ApiError && err.code === 'not_logged_in') loggedOut();
    else showError(err);
  }
  return undefined;
}

addressForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const coin = addressForm.elements.coin.value;
  const address = addressForm.elements.address.value.trim();
  if (!coin || !address) {
    showMessage('Choose a coin and enter an address.', 'error');
    return;
  }
  busy(addressForm.querySelector('button'), async () => {
    const saved = await api('set_withdraw_address', { coin, address });
    showMessage(`${saved.coin} address saved. It can be used from ${fmtDateTime(saved.usable_from)}.`, 'ok');
    addressForm.elements.address.value = '';
    await loadAddresses();
  });
});

withdrawForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const coin = withdrawForm.elements.coin.value;
  const amount = withdrawForm.elements.amount.value.trim();
  if (!coin) {
    showMessage('Choose a coin.', 'error');
    return;
  }
  busy(withdrawForm.querySelector('button'), async () => {
    const w = await api('withdraw', amount ? { coin, amount } : { coin });
    showMessage(`Withdrawal #${w.withdrawal_id} of ${w.amount} ${w.coin} (fee ${w.fee}) to ${w.address} is ${w.status}.`, 'ok');
    withdrawForm.elements.amount.value = '';
    await refresh();
  });
});

keyForm.elements.kind.addEventListener('change', () => {
  $id('public-key-field').hidden = keyForm.elements.kind.value !== 'ed25519';
});

keyForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const f = keyForm.elements;
  const label = f.label.value.trim();
  if (!label) {
    showMessage('Give the key a label, e.g. freqtrade.', 'error');
    return;
  }
  const params = { label, permissions: f.permissions.value, kind: f.kind.value, ips: f.ips.value.trim() };
  if (f.kind.value === 'ed25519') params.public_key = f.public_key.value.trim();
  busy(keyForm.querySelector('button[type=submit]'), async () => {
    const created = await api('create_api_key', params);
    showNewKey(created);
    showMessage(`API key "${created.label}" created.`, 'ok');
    f.label.value = '';
    f.public_key.value = '';
    await loadKeys();
  });
});

$id('keys').addEventListener('click', (ev) => {
  const button = ev.target.closest('button.delete-key');
  if (!button) return;
  busy(button, async () => {
    await api('delete_api_key', { id: button.dataset.id });
    showMessage('API key deleted: programs using it are refused from now on.', 'ok');
    $id('new-key').hidden = true;
    await loadKeys();
  });
});

setCoins(['BTC', 'ETH', 'USDT']);
await refresh(true);
setInterval(() => refresh(false), 10000);
