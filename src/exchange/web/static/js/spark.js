// A small SVG sparkline from [time, close] points; null closes are skipped.
const SVG = 'http://www.w3.org/2000/svg';

// `tone` is 'up', 'down' or 'flat' (the row's 24 h change), so line and number agree.
export function sparkline(points, tone = 'flat', { width = 120, height = 32 } = {}) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('width', width);
  svg.setAttribute('height', height);
  svg.setAttribute('class', 'spark');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('preserveAspectRatio', 'none');
  const pts = (points || [])
    .map(([t, c], i) => [i, c === null || c === undefined ? NaN : Number(c)])
    .filter(([, c]) => Number.isFinite(c));
  if (pts.length < 2) return svg;
  const n = Math.max((points.length || 1) - 1, 1);
  const values = pts.map(([, c]) => c);
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const span = hi - lo || 1;
  const coords = pts.map(([i, c]) => {
    const x = (i / n) * (width - 2) + 1;
    const y = hi === lo ? height / 2 : height - 2 - ((c - lo) / span) * (height - 4);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  const line = document.createElementNS(SVG, 'polyline');
  line.setAttribute('points', coords.join(' '));
  line.setAttribute('class', tone);
  svg.append(line);
  return svg;
}
