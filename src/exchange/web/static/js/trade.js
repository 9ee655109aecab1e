// Trade page: chart, order book, recent trades, order forms and the user's orders.
// Live through /ws; polls every 2.5 s while the socket is closed.
import { api, busy, showError, showMessage, ApiError } from './api.js';
import { el, fmtTime, dateTimeNode, fmtChange, changeClass, fillTable } from './dom.js';
import { parseDec, mulDec, formatDec, isPositive, scaleOf } from './dec.js';
import { Live } from './live.js';
import { isLoggedIn, setLoggedIn } from './nav.js';

const root = document.getElementById('trade');
const PAIR = root.dataset.pair;
const BASE = root.dataset.base;
const QUOTE = root.dataset.quote;
const FEE_RATE = parseDec(root.dataset.feeRate || '0.002');
const COIN_DP = { BTC: 8, ETH: 8, USDT: 6 };
const dp = (coin) => COIN_DP[coin] ?? 8;
const $id = (id) => document.getElementById(id);

let interval = '1min';
let trades = [];

// ---------- chart ----------
const LWC = window.LightweightCharts;
const chartBox = $id('chart');
const chart = LWC.createChart(chartBox, {
  autoSize: true,
  layout: { background: { color: 'transparent' }, textColor: '#9aa4b2', attributionLogo: false },
  grid: { vertLines: { color: '#1f2733' }, horzLines: { color: '#1f2733' } },
  rightPriceScale: { borderColor: '#2a3340' },
  // rightOffset: the newest candle is not drawn half under the price axis.
  timeScale: { borderColor: '#2a3340', timeVisible: true, secondsVisible: false, rightOffset: 4 },
  crosshair: { mode: LWC.CrosshairMode.Normal },
});
const candles = chart.addCandlestickSeries({
  upColor: '#16c784', downColor: '#ea3943', borderVisible: false,
  wickUpColor: '#16c784', wickDownColor: '#ea3943',
});
const volumes = chart.addHistogramSeries({ priceFormat: { type: 'volume' }, priceScaleId: '' });
chart.priceScale('').applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
candles.priceScale().applyOptions({ scaleMargins: { top: 0.1, bottom: 0.25 } });
let lastBarTime = 0;
let precisionSet = false;

// Chart numbers are for drawing only; the chart shows local time, so shift by the UTC offset.
const chartTime = (ms) => Math.floor(Number(ms) / 1000) - new Date(Number(ms)).getTimezoneOffset() * 60;
function bars(row) {
  const [t, o, h, l, c, v] = row;
  const time = chartTime(t);
  return [
    { time, open: Number(o), high: Number(h), low: Number(l), close: Number(c) },
    { time, value: Number(v), color: Number(c) >= Number(o) ? 'rgba(22,199,132,0.45)' : 'rgba(234,57,67,0.45)' },
  ];
}

function setPrecision(sample) {
  if (precisionSet || sample === undefined) return;
  const precision = Math.min(scaleOf(sample), 8);
  candles.applyOptions({ priceFormat: { type: 'price', precision, minMove: 10 ** -precision } });
  precisionSet = true;
}

async function loadCandles() {
  const wanted = interval;
  const rows = await api('get_coin_k_line', { pair: PAIR, interval: wanted, limit: 500 });
  if (wanted !== interval) return;
  setPrecision(rows.length ? rows[rows.length - 1][4] : undefined);
  const pairs = rows.map(bars);
  candles.setData(pairs.map((p) => p[0]));
  volumes.setData(pairs.map((p) => p[1]));
  lastBarTime = pairs.length ? pairs[pairs.length - 1][0].time : 0;
  $id('chart-empty').hidden = rows.length > 0;
}

function liveCandle(row) {
  if (!Array.isArray(row) || row.length < 6) return;
  const [candle, volume] = bars(row);
  if (candle.time < lastBarTime) return;
  setPrecision(row[4]);
  candles.update(candle);
  volumes.update(volume);
  lastBarTime = candle.time;
  $id('chart-empty').hidden = true;
}

const switcher = $id('interval-switcher');
switcher.addEventListener('click', (ev) => {
  const button = ev.target.closest('button[data-interval]');
  if (!button || button.dataset.interval === interval) return;
  live.unsubscribe('kline', PAIR);
  interval = button.dataset.interval;
  for (const b of switcher.querySelectorAll('button')) b.setAttribute('aria-pressed', String(b === button));
  live.subscribe('kline', PAIR, { interval });
  loadCandles().catch(showError);
});

// ---------- ticker ----------
function renderTicker(t) {
  if (Array.isArray(t)) t = { pair: t[0], price: t[1], volume_24h: t[2], change_percent: t[3] };
  $id('ticker-price').textContent = t.price ?? '–';
  const change = $id('ticker-change');
  change.textContent = fmtChange(t.change_percent);
  change.className = `mono ${changeClass(t.change_percent)}`;
  $id('ticker-volume').textContent = `${t.volume_24h ?? '0'} ${BASE}`;
  document.title = `${t.price ?? '–'} · ${PAIR} · Exchange`;
}
const loadTicker = async () => renderTicker(await api('get_coin', { pair: PAIR }));

// ---------- order book ----------
function renderDepth(depth) {
  const levels = 15;
  const asks = (depth.asks || []).slice(0, levels);
  const bids = (depth.bids || []).slice(0, levels);
  const max = Math.max(...asks.concat(bids).map(([, a]) => Number(a)), 0) || 1;
  const level = (side) => ([price, amount]) => {
    const bar = el('span', { class: 'bar' });
    bar.style.width = `${Math.min(100, (Number(amount) / max) * 100).toFixed(1)}%`;
    return el('button', { type: 'button', class: `level ${side}`, dataset: { price }, title: 'Use this price' },
      bar, el('span', { class: 'price mono' }, price), el('span', { class: 'amount mono' }, amount));
  };
  $id('book-asks').replaceChildren(...asks.slice().reverse().map(level('ask')));
  $id('book-bids').replaceChildren(...bids.map(level('bid')));
  const mid = $id('book-mid');
  if (asks.length && bids.length) {
    const spread = parseDec(asks[0][0]);
    const bid = parseDec(bids[0][0]);
    const scale = Math.max(spread.scale, bid.scale);
    const diff = spread.n * 10n ** BigInt(scale - spread.scale) - bid.n * 10n ** BigInt(scale - bid.scale);
    mid.textContent = `Spread ${formatDec({ n: diff, scale }, scale)}`;
  } else {
    mid.textContent = asks.length || bids.length ? '–' : 'No orders yet';
  }
}
const loadDepth = async () => renderDepth(await api('get_depth', { pair: PAIR, limit: 15 }));

$id('orderbook').addEventListener('click', (ev) => {
  const level = ev.target.closest('.level');
  if (!level) return;
  for (const form of [$id('buy-form'), $id('sell-form')]) form.elements.price.value = level.dataset.price;
  updateCalc($id('buy-form'));
  updateCalc($id('sell-form'));
});

// ---------- recent trades ----------
function renderTrades() {
  fillTable($id('trades'), trades.map((t) => el('tr', { class: `trade-row ${t.side}`, dataset: { id: t.id } },
    el('td', { class: `mono ${t.side === 'sell' ? 'down' : 'up'}` }, t.price),
    el('td', { class: 'num mono' }, t.amount),
    el('td', { class: 'num mono muted' }, fmtTime(t.time)),
  )), 'No trades yet');
}
async function loadTrades() {
  trades = await api('get_deal_record', { pair: PAIR, limit: 50 });
  renderTrades();
}
function liveTrade(t) {
  if (!t || trades.some((x) => x.id === t.id)) return;
  trades = [t, ...trades].slice(0, 50);
  renderTrades();
}

// ---------- order forms ----------
function updateCalc(form) {
  const price = parseDec(form.elements.price.value);
  const amount = parseDec(form.elements.amount.value);
  form.elements.price.classList.toggle('invalid', form.elements.price.value !== '' && !price);
  form.elements.amount.classList.toggle('invalid', form.elements.amount.value !== '' && !amount);
  if (!price || !amount) {
    form.elements.total.value = '–';
    form.elements.fee.value = '–';
    return;
  }
  const total = mulDec(price, amount);
  form.elements.total.value = formatDec(total, dp(QUOTE));
  form.elements.fee.value = form.dataset.side === 'buy'
    ? formatDec(mulDec(amount, FEE_RATE), dp(BASE))
    : formatDec(mulDec(total, FEE_RATE), dp(QUOTE));
}

for (const form of [$id('buy-form'), $id('sell-form')]) {
  form.addEventListener('input', () => updateCalc(form));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const side = form.dataset.side;
    const price = form.elements.price.value.trim();
    const amount = form.elements.amount.value.trim();
    if (!isPositive(parseDec(price)) || !isPositive(parseDec(amount))) {
      showMessage('Enter a price and an amount as positive numbers, for example 0.5.', 'error');
      return;
    }
    busy(form.querySelector('button[type=submit]'), async () => {
      const order = await api(side, { pair: PAIR, price, amount });
      const filled = order && order.filled && parseDec(order.filled)?.n > 0n ? `, filled ${order.filled} ${BASE}` : '';
      showMessage(`${side === 'buy' ? 'Buy' : 'Sell'} order placed: ${amount} ${BASE} at ${price} ${QUOTE}${filled}.`, 'ok');
      setLoggedIn(true);
      refreshPrivate();
    });
  });
}

// ---------- balances, orders, my trades (need a session) ----------
function renderBalances(map) {
  const avail = (coin) => (map && map[coin] ? map[coin].available : '0');
  $id('balance-base').textContent = avail(BASE);
  $id('balance-quote').textContent = avail(QUOTE);
}

const statusText = (s) => String(s || '').replace('_', ' ');
const sideCell = (side) => el('td', { class: side === 'buy' ? 'up' : 'down' }, side === 'buy' ? 'Buy' : 'Sell');

function orderRow(o, withCancel) {
  return el('tr', { class: withCancel ? 'order-row' : 'history-row', dataset: { orderId: o.order_id } },
    el('td', { class: 'mono muted' }, dateTimeNode(o.created)),
    sideCell(o.side),
    el('td', { class: 'num mono' }, o.price ?? 'market'),
    el('td', { class: 'num mono' }, o.amount),
    el('td', { class: 'num mono' }, o.filled),
    withCancel ? null : el('td', { class: 'num mono hide-sm' }, o.average_price ?? '–'),
    el('td', { class: withCancel ? 'hide-sm' : '' }, statusText(o.status)),
    withCancel ? el('td', { class: 'action' }, el('button', { type: 'button', class: 'btn small cancel-btn', dataset: { orderId: o.order_id } }, 'Cancel')) : null,
  );
}

async function loadPrivate() {
  const [balances, open, all, mine] = await Promise.all([
    api('get_user_coin'),
    api('get_orders', { pair: PAIR, status: 'open' }),
    api('get_orders', { pair: PAIR, status: 'all', limit: 50 }),
    api('get_my_trades', { pair: PAIR, limit: 50 }),
  ]);
  renderBalances(balances);
  fillTable($id('open-orders'), open.map((o) => orderRow(o, true)), 'No open orders');
  fillTable($id('order-history'), all.map((o) => orderRow(o, false)), 'No orders yet');
  fillTable($id('my-trades'), mine.map((t) => el('tr', { class: 'my-trade-row' },
    el('td', { class: 'mono muted' }, dateTimeNode(t.time)),
    sideCell(t.side),
    el('td', { class: 'num mono' }, t.price),
    el('td', { class: 'num mono' }, t.amount),
    el('td', { class: 'num mono' }, `${t.fee} ${t.fee_coin}`),
    el('td', { class: 'hide-sm' }, t.role),
  )), 'No trades yet');
}

function showLoggedOut() {
  $id('login-hint').hidden = false;
  renderBalances(null);
  $id('balance-base').textContent = '–';
  $id('balance-quote').textContent = '–';
  const hint = 'Log in to see your orders';
  for (const id of ['open-orders', 'order-history', 'my-trades']) fillTable($id(id), [], hint);
}

let privateTimer = 0;
function refreshPrivate() {
  clearTimeout(privateTimer);
  privateTimer = setTimeout(async () => {
    if (!isLoggedIn()) return showLoggedOut();
    try {
      await loadPrivate();
      $id('login-hint').hidden = true;
    } catch (err) {
      if (err instanceof ApiError && err.code === 'not_logged_in') showLoggedOut();
      else showError(err);
    }
  }, 150);
}

$id('open-orders').addEventListener('click', (ev) => {
  const button = ev.target.closest('.cancel-btn');
  if (!button) return;
  busy(button, async () => {
    await api('cancel_order', { order_id: button.dataset.orderId });
    showMessage('Order canceled.', 'ok');
    refreshPrivate();
  });
});

// ---------- live stream and polling ----------
const reload = {
  trades: loadTrades, depth: loadDepth, ticker: loadTicker, kline: loadCandles,
  orders: async () => refreshPrivate(), balances: async () => refreshPrivate(),
};

const live = new Live({
  onEvent(msg) {
    if (msg.subscribed) {
      (reload[msg.channel] || (async () => {}))().catch(() => {});
      return;
    }
    if (msg.pair && msg.pair !== PAIR) return;
    switch (msg.channel) {
      case 'trades': liveTrade(msg.data); break;
      case 'depth': renderDepth(msg.data); break;
      case 'ticker': renderTicker(msg.data); break;
      case 'kline':
        if (!msg.interval || msg.interval === interval) liveCandle(msg.data);
        break;
      case 'orders': refreshPrivate(); break;
      case 'balances': if (msg.data) renderBalances(msg.data); break;
      default: break;
    }
  },
  onGap(channel) {
    (reload[channel] || (async () => {}))().catch(() => {});
  },
  onError(description) {
    if (description.startsWith('not_logged_in')) {
      setLoggedIn(false);
      showLoggedOut();
    }
  },
  onState(state) {
    const box = $id('live-state');
    box.textContent = state === 'open' ? '● live' : '○ polling';
    box.className = state === 'open' ? 'up' : 'muted';
  },
});

async function refreshPublic() {
  try {
    await Promise.all([loadTicker(), loadDepth(), loadTrades(), loadCandles()]);
  } catch (err) {
    showError(err);
  }
}

live.subscribe('trades', PAIR);
live.subscribe('depth', PAIR);
live.subscribe('ticker', PAIR);
live.subscribe('kline', PAIR, { interval });
if (isLoggedIn()) {
  live.subscribe('orders');
  live.subscribe('balances');
}
refreshPublic();
refreshPrivate();
live.connect();
setInterval(() => {
  if (live.open) return;
  refreshPublic();
  refreshPrivate();
}, 2500);
