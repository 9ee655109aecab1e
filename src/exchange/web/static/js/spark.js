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
  if (!pts.length) return svg;
  const n = Math.max((points.length || 1) - 1, 1);
  const values = pts.map(([, c]) => c);
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const span = hi - lo || 1;
  const xOf = (i) => (i / n) * (width - 2) + 1;
  const coords = pts.map(([i, c]) => {
    const y = hi === lo ? height / 2 : height - 2 - ((c - lo) / span) * (height - 4);
    return `${xOf(i).toFixed(1)},${y.toFixed(1)}`;
  });
  // A market whose first trade is in the latest half hour has one point: draw its slot
  // as a short flat line ending in a dot, rather than nothing.
  if (pts.length === 1) coords.unshift(`${Math.max(1, xOf(pts[0][0] - 1)).toFixed(1)},${(height / 2).toFixed(1)}`);
  const line = document.createElementNS(SVG, 'polyline');
  line.setAttribute('points', coords.join(' '));
  line.setAttribute('class', tone);
  svg.append(line);
  if (pts.length === 1) {
    const dot = document.createElementNS(SVG, 'circle');
    const [x, y] = coords[1].split(',');
    dot.setAttribute('cx', Math.min(Number(x), width - 3).toFixed(1));  // not cut at the edge
    dot.setAttribute('cy', y);
    dot.setAttribute('r', '2.5');
    dot.setAttribute('class', tone);
    svg.append(dot);
  }
  return svg;
}
