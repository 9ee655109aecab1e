// Calls /api/<method> and unwraps the envelope {status, data, description}.
export const ROOT = document.body.dataset.root || '';

export class ApiError extends Error {
  constructor(code, detail, httpStatus) {
    super(detail || code);
    this.code = code;
    this.detail = detail;
    this.httpStatus = httpStatus;
  }
}

const GET_METHODS = new Set([
  'get_rank', 'get_coin', 'get_deal_record', 'get_depth', 'get_simple_k_line', 'get_coin_k_line',
]);

// Sends exactly the strings given: values are never converted to numbers.
export async function api(method, params = {}) {
  const clean = Object.entries(params).filter(([, v]) => v !== undefined && v !== null);
  const query = new URLSearchParams(clean);
  const isGet = GET_METHODS.has(method);
  let url = `${ROOT}/api/${method}`;
  const init = { method: isGet ? 'GET' : 'POST', credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (isGet) {
    if (clean.length) url += `?${query}`;
  } else {
    init.body = query;
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch {
    throw new ApiError('network', 'The server cannot be reached. Check your connection and try again.', 0);
  }
  let envelope;
  try {
    envelope = await response.json();
  } catch {
    throw new ApiError('bad_response', `The server answered HTTP ${response.status} without a readable body.`, response.status);
  }
  if (envelope && envelope.status === true) return envelope.data;
  const description = String((envelope && envelope.description) || '');
  const cut = description.indexOf(': ');
  const code = cut > 0 ? description.slice(0, cut) : (description || 'error');
  const detail = cut > 0 ? description.slice(cut + 2) : '';
  if (code === 'not_logged_in') document.dispatchEvent(new CustomEvent('auth:out'));
  throw new ApiError(code, detail, response.status);
}

const FRIENDLY = {
  not_logged_in: 'Please log in first.',
  invalid_credentials: 'Wrong e-mail address or password.',
  too_many_attempts: 'Too many attempts. Please wait a while before trying again.',
  rate_limited: 'Too many requests. Please wait a moment and try again.',
  user_exists: 'This e-mail address is already registered. You can log in instead.',
  invalid_email: 'Please enter a valid e-mail address.',
  weak_password: 'Please choose a stronger password.',
  invalid_code: 'The verification code is not right.',
  code_expired: 'The verification code has expired. Ask for a new one.',
  insufficient_balance: 'Not enough balance for this.',
  below_minimum: 'The amount is below the minimum.',
  invalid_address: 'This address is not valid for the chosen coin.',
  address_not_set: 'Set a withdrawal address for this coin first.',
  address_cooldown: 'This address was set recently and cannot be used yet.',
  market_halted: 'Trading on this market is paused.',
  account_frozen: 'This account is frozen: it cannot trade or withdraw now. Contact support.',
  order_not_found: 'The order was not found (it may already be filled or canceled).',
  unknown_pair: 'This market does not exist.',
  unknown_coin: 'This coin is not supported.',
  forbidden: 'This action is not allowed.',
  overloaded: 'The exchange is busy. Please try again in a moment.',
  internal_error: 'Something went wrong on our side. Please try again.',
  missing_argument: 'Please fill in all required fields.',
  invalid_argument: 'Some of the values are not valid.',
};

// A sentence for the user: the friendly words for the code plus the server's own detail.
export function errorText(err) {
  if (!(err instanceof ApiError)) return `Unexpected error: ${err && err.message ? err.message : err}`;
  const friendly = FRIENDLY[err.code];
  if (friendly && err.detail) return `${friendly} (${err.detail})`;
  return friendly || err.detail || err.code.replace(/_/g, ' ');
}

let hideTimer = 0;
export function showMessage(text, kind = 'info', { linkLogin = false } = {}) {
  const box = document.getElementById('message');
  if (!box) return;
  clearTimeout(hideTimer);
  box.replaceChildren(document.createTextNode(text));
  if (linkLogin) {
    const a = document.createElement('a');
    a.href = `${ROOT}/login?next=${encodeURIComponent(location.pathname + location.search)}`;
    a.textContent = 'Log in';
    box.append(' ', a);
  }
  box.className = `message ${kind}`;
  box.hidden = false;
  if (kind === 'ok') hideTimer = setTimeout(() => { box.hidden = true; }, 6000);
}

export function showError(err) {
  showMessage(errorText(err), 'error', { linkLogin: err instanceof ApiError && err.code === 'not_logged_in' });
}

export function clearMessage() {
  const box = document.getElementById('message');
  if (box) box.hidden = true;
}

// Runs an async form action with the submit button disabled; errors go to #message.
export async function busy(button, action) {
  if (button) button.disabled = true;
  try {
    return await action();
  } catch (err) {
    showError(err);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}
