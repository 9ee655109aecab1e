// The /ws stream: keeps a set of subscriptions, resubscribes after reconnecting,
// and reports sequence gaps so the page can reload a snapshot over REST.
import { ROOT } from './api.js';

const key = (channel, pair) => `${channel}|${pair || ''}`;

export class Live {
  constructor({ onEvent, onState = () => {}, onGap = () => {}, onError = () => {} }) {
    this.onEvent = onEvent;
    this.onError = onError;
    this.onState = onState;
    this.onGap = onGap;
    this.subs = new Map();    // key -> subscribe message
    this.seqs = new Map();    // key -> last seq seen
    this.ws = null;
    this.delay = 1000;
    this.stopped = false;
  }

  get open() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  connect() {
    if (this.stopped || typeof WebSocket === 'undefined') return;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let ws;
    try {
      ws = new WebSocket(`${scheme}//${location.host}${ROOT}/ws`);
    } catch {
      this.retry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.delay = 1000;
      this.seqs.clear();
      for (const msg of this.subs.values()) ws.send(JSON.stringify(msg));
      this.onState('open');
    };
    ws.onmessage = (ev) => this.receive(ev.data);
    ws.onclose = () => {
      if (this.ws === ws) this.ws = null;
      this.onState('closed');
      this.retry();
    };
    ws.onerror = () => ws.close();
  }

  retry() {
    if (this.stopped) return;
    setTimeout(() => this.connect(), this.delay);
    this.delay = Math.min(this.delay * 2, 15000);
  }

  receive(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (msg.op === 'error') {
      this.onError(String(msg.description || ''));
      return;
    }
    if (msg.op === 'subscribed') {
      this.onEvent({ ...msg, subscribed: true });
      return;
    }
    if (!msg.channel) return;
    const k = key(msg.channel, msg.pair);
    const last = this.seqs.get(k);
    if (typeof msg.seq === 'number') {
      if (last !== undefined && msg.seq !== last + 1) this.onGap(msg.channel, msg.pair);
      this.seqs.set(k, msg.seq);
    }
    this.onEvent(msg);
  }

  subscribe(channel, pair, extra = {}) {
    const msg = { op: 'subscribe', channel, ...(pair ? { pair } : {}), ...extra };
    this.subs.set(key(channel, pair), msg);
    if (this.open) this.ws.send(JSON.stringify(msg));
  }

  unsubscribe(channel, pair) {
    const k = key(channel, pair);
    const msg = this.subs.get(k);
    this.subs.delete(k);
    this.seqs.delete(k);
    if (msg && this.open) this.ws.send(JSON.stringify({ ...msg, op: 'unsubscribe' }));
  }
}
