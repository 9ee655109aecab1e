// Exact decimal strings as scaled BigInts: {n: BigInt, scale: digits after the point}.
// Used only for what is displayed (totals, fees); inputs are always sent as typed.

export function parseDec(text) {
  const m = /^\s*(\d*)(?:\.(\d*))?\s*$/.exec(String(text ?? ''));
  if (!m || (m[1] === '' && !m[2])) return null;
  const frac = m[2] || '';
  return { n: BigInt((m[1] || '0') + frac), scale: frac.length };
}

export function mulDec(a, b) {
  return { n: a.n * b.n, scale: a.scale + b.scale };
}

// Rounds half up to `dp` digits and prints in plain notation, e.g. "12.345600".
export function formatDec(d, dp) {
  let { n, scale } = d;
  if (scale > dp) {
    const div = 10n ** BigInt(scale - dp);
    n = (n + div / 2n) / div;
    scale = dp;
  } else if (scale < dp) {
    n *= 10n ** BigInt(dp - scale);
    scale = dp;
  }
  const digits = n.toString().padStart(scale + 1, '0');
  if (scale === 0) return digits;
  return `${digits.slice(0, -scale)}.${digits.slice(-scale)}`;
}

// Drops trailing zeros of a plain decimal string for compact display ("1.50000" -> "1.5").
export function trimZeros(text) {
  if (text == null) return '';
  const s = String(text);
  return s.includes('.') ? s.replace(/0+$/, '').replace(/\.$/, '') : s;
}

export function isPositive(d) {
  return d !== null && d.n > 0n;
}

// Number of digits after the point in a decimal string ("0.053210" -> 6).
export function scaleOf(text) {
  const s = String(text ?? '');
  const i = s.indexOf('.');
  return i < 0 ? 0 : s.length - i - 1;
}
