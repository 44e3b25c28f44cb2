// The kv dashboard. Polls GET ../cluster/views (every node's status, as
// gathered by the node serving this page) and renders it into the DOM.
// Plain JavaScript, no library, nothing loaded from elsewhere.
//
// Stable hooks for tests and scripts (keep them):
//   body[data-state]     loading | live | stale | auth
//   #summary[data-up][data-total]
//   tr.node-row[data-node][data-health]      up | degraded | down
//   #matrix td[data-observer][data-node][data-seen]
//                        up | suspect | down | unknown | unreachable
'use strict';

const POLL_MS = 2000;
const FETCH_TIMEOUT_MS = 10000;
const TOKEN_KEY = 'kv.dashboard.token';
const COLORS = ['#2563eb', '#d97706', '#059669', '#db2777', '#7c3aed', '#0891b2', '#65a30d', '#dc2626'];
const SVG_NS = 'http://www.w3.org/2000/svg';

// ---- small helpers ------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (name === 'className') node.className = value;
    else if (name === 'data') for (const [k, v] of Object.entries(value)) node.dataset[k] = v;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

const $ = (id) => document.getElementById(id);

function two(n) {
  return String(n).padStart(2, '0');
}

function clockTime(ms) {
  const d = new Date(ms);
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

function ago(thenMs, nowMs) {
  if (!thenMs) return 'never';
  const s = Math.max(0, Math.round((nowMs - thenMs) / 1000));
  return s < 120 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
}

function fmt(n, digits) {
  if (n === undefined || n === null || Number.isNaN(n)) return '—';
  return Number(n).toLocaleString('en-US', { maximumFractionDigits: digits || 0 });
}

const sum = (xs) => xs.reduce((a, b) => a + b, 0);

// ---- the token ----------------------------------------------------------

function readToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || '';
  } catch (_) {
    return sessionToken;
  }
}

let sessionToken = '';

function saveToken(token) {
  sessionToken = token;
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch (_) {
    // Storage disabled: the token lives until the page is closed.
  }
}

// A token may also come in the fragment (`/ui/#token=...`): the fragment
// never reaches a server; it is kept and removed from the address bar.
function tokenFromFragment() {
  const match = location.hash.match(/(?:^#|&)token=([^&]*)/);
  if (!match) return;
  saveToken(decodeURIComponent(match[1]));
  history.replaceState(null, '', location.pathname + location.search);
}

// ---- fetching -----------------------------------------------------------

async function fetchViews() {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
  const headers = { Accept: 'application/json' };
  const token = readToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    const response = await fetch('../cluster/views', {
      headers,
      signal: controller.signal,
      cache: 'no-store',
    });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const error = (body && body.error) || {};
      throw { status: response.status, code: error.code, message: error.message };
    }
    return body;
  } catch (e) {
    if (e && e.name === 'AbortError') {
      throw { status: 0, code: 'timeout', message: `no answer within ${FETCH_TIMEOUT_MS / 1000} s` };
    }
    if (e instanceof Error) throw { status: 0, code: 'network', message: e.message };
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

function notice(text, kind) {
  const box = $('notice');
  if (!text) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  box.className = kind || '';
  box.textContent = text;
}

let lastGood = 0;

async function poll() {
  try {
    const view = await fetchViews();
    render(view);
    lastGood = Date.now();
    document.body.dataset.state = 'live';
    notice('');
  } catch (e) {
    if (e.status === 401 || e.status === 403) {
      document.body.dataset.state = 'auth';
      notice(
        e.status === 401
          ? 'This node requires a client token (KV_API_TOKEN): enter it above.'
          : 'The token was refused: enter the right one above.',
        'warn',
      );
      $('token').focus();
    } else {
      document.body.dataset.state = lastGood ? 'stale' : 'loading';
      const since = lastGood ? ` Showing data from ${clockTime(lastGood)}.` : '';
      notice(`The node serving this page did not answer (${e.code || e.status}: ${e.message || 'error'}).${since}`, 'error');
    }
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

// ---- rendering ----------------------------------------------------------

function render(view) {
  const nodes = view.nodes;
  const color = {};
  nodes.forEach((n, i) => { color[n.id] = COLORS[i % COLORS.length]; });
  const ctx = { view, nodes, color };

  $('served-by').textContent = `served by ${view.node}`;
  $('updated').textContent = `updated ${clockTime(Date.now())}`;
  const up = nodes.filter((n) => n.reachable).length;
  const summary = $('summary');
  summary.textContent = `${up}/${nodes.length} nodes answer`;
  summary.dataset.up = up;
  summary.dataset.total = nodes.length;
  summary.className = `pill ${up === nodes.length ? 'ok' : up === 0 ? 'bad' : 'warn'}`;

  renderNodes(ctx);
  renderRing(ctx);
  renderMatrix(ctx);
  renderHints(ctx);
  renderChart($('rate-chart'), ctx, ratePoints, 'req/s');
  renderChart($('latency-chart'), ctx, latencyPoints, 'ms');
  renderQueues(ctx);
}

function swatch(c) {
  return el('span', { className: 'swatch', data: { color: c } });
}

// CSS colours set through the CSSOM (allowed by the page's CSP).
function paintSwatches(root) {
  for (const s of root.querySelectorAll('.swatch')) s.style.background = s.dataset.color;
}

function health(n) {
  if (!n.reachable) return 'down';
  return n.status.records === null ? 'degraded' : 'up';
}

// Client requests/s and the worst p99 over the last six buckets (the
// current one, still filling, and the five before it: 50 to 60 s).
function lastMinute(status) {
  const bucketMs = status.requests.bucket_ms;
  const from = Math.floor(status.now_ms / bucketMs) * bucketMs - 5 * bucketMs;
  const buckets = status.requests.buckets.filter((b) => b.start_ms >= from);
  const requests = sum(buckets.map((b) => b.requests));
  const p99 = buckets.filter((b) => b.requests > 0).map((b) => b.latency_ms_p99);
  return { rate: requests / ((status.now_ms - from) / 1000), p99: p99.length ? Math.max(...p99) : null };
}

function restoreText(r) {
  let text = r.state;
  if (r.attempt) text += ` (attempt ${r.attempt})`;
  if (r.missing && r.missing.length) text += `, missing ${r.missing.join(', ')}`;
  return text;
}

function renderNodes({ view, nodes, color }) {
  const body = clear($('nodes').tBodies[0]);
  const shares = view.ring.shares;
  for (const n of nodes) {
    const h = health(n);
    const row = el('tr', { className: `node-row ${h}`, data: { node: n.id, health: h } });
    const name = el('td', { className: 'name' }, swatch(color[n.id]), n.id,
      n.self ? el('span', { className: 'tag' }, 'this page') : null,
      el('div', { className: 'url muted' }, n.url));
    const share = shares[n.id] || 0;
    const bar = el('div', { className: 'bar' }, el('span', { data: { width: (share * 100).toFixed(1) } }));
    row.append(name,
      el('td', {}, el('span', { className: `badge ${h}` }, h)),
      el('td', { className: 'share' }, `${(share * 100).toFixed(1)} %`, bar));
    if (!n.reachable) {
      row.append(el('td', { colspan: 10, className: 'muted' },
        `no answer to ${view.node} (${n.error || 'error'}, after ${n.elapsed_ms} ms)`));
      body.append(row);
      continue;
    }
    const s = n.status;
    const jobs = s.jobs;
    let queued = '—';
    let workers = '—';
    if (jobs.mode === 'queue' && !jobs.error) {
      const q = jobs.queues;
      queued = `${fmt(sum(q.map((x) => x.depth)))} / ${fmt(sum(q.map((x) => x.in_flight)))} / ${fmt(sum(q.map((x) => x.retrying)))}`;
      workers = fmt(Math.max(0, ...q.map((x) => x.workers)));
    } else if (jobs.error) {
      queued = jobs.error;
    } else {
      queued = jobs.mode;
    }
    const minute = lastMinute(s);
    const errors = sum(s.requests.buckets.map((b) => b.errors));
    const clock = s.clock.fenced
      ? el('span', { className: 'badge down' }, `fenced ${fmt(-s.clock.median_offset_ms)} ms`)
      : el('span', { className: 'muted' }, `ok ${s.clock.median_offset_ms >= 0 ? '+' : ''}${fmt(s.clock.median_offset_ms)} ms`);
    const restoreClass = { ready: 'up', idle: '', restoring: 'suspect', partial: 'suspect', failed: 'down' }[s.restore.state] || '';
    const dead = jobs.dead_letters;
    row.append(
      el('td', { className: 'num' }, s.records === null ? 'unavailable' : fmt(s.records)),
      el('td', { className: 'num' }, queued),
      el('td', { className: 'num' }, workers),
      el('td', { className: 'num' }, fmt(sum(Object.values(s.hints_held)))),
      el('td', { className: `num ${dead ? 'alert' : ''}` }, dead === null || dead === undefined ? '—' : fmt(dead)),
      el('td', {}, el('span', { className: `badge ${restoreClass}` }, restoreText(s.restore))),
      el('td', { title: `${s.clock.peers_measured} peers measured, bound ${s.clock.drift_max_ms} ms` }, clock),
      el('td', { className: 'num' }, fmt(minute.rate, 1)),
      el('td', { className: 'num' }, minute.p99 === null ? '—' : fmt(minute.p99, 1)),
      el('td', { className: `num ${errors ? 'alert' : ''}` }, fmt(errors)),
    );
    body.append(row);
  }
  for (const span of body.querySelectorAll('.bar span')) span.style.width = `${span.dataset.width}%`;
  paintSwatches(body);
}

const RING_C = 100;

function ringPoint(r, frac) {
  const a = frac * 2 * Math.PI - Math.PI / 2;
  return `${(RING_C + r * Math.cos(a)).toFixed(2)} ${(RING_C + r * Math.sin(a)).toFixed(2)}`;
}

// One segment of an annulus, from a0 to a1 (fractions of a turn, clockwise from the top).
function annulus(outer, inner, a0, a1) {
  const large = a1 - a0 > 0.5 ? 1 : 0;
  return `M ${ringPoint(outer, a0)} A ${outer} ${outer} 0 ${large} 1 ${ringPoint(outer, a1)} `
    + `L ${ringPoint(inner, a1)} A ${inner} ${inner} 0 ${large} 0 ${ringPoint(inner, a0)} Z`;
}

// Outer band: who owns each of the sampled points of the hash space (the
// vnodes interleave). Inner donut: each node's share of the space.
function renderRing({ view, nodes, color }) {
  const ring = clear($('ring'));
  const arcs = view.ring.arcs;
  const reachable = (id) => (nodes.find((n) => n.id === id) || {}).reachable;
  let start = 0;
  for (let i = 1; i <= arcs.length; i += 1) {
    if (i < arcs.length && arcs[i] === arcs[start]) continue;
    ring.append(svg('path', {
      d: annulus(96, 84, start / arcs.length, i / arcs.length),
      fill: color[arcs[start]] || '#9ca3af',
      'fill-opacity': reachable(arcs[start]) ? '0.9' : '0.25',
      'data-node': arcs[start],
    }));
    start = i;
  }
  let from = 0;
  for (const n of nodes) {
    const share = view.ring.shares[n.id] || 0;
    if (share <= 0) continue;
    // A full turn cannot be one arc: stop just short of it.
    const to = Math.min(from + share, 0.99999);
    ring.append(svg('path', {
      d: annulus(78, 52, from, to),
      fill: color[n.id],
      'fill-opacity': n.reachable ? '0.85' : '0.25',
      stroke: '#ffffff',
      'stroke-width': '1',
      'data-share': n.id,
    }));
    from += share;
  }
  const c = RING_C;
  ring.append(svg('text', { x: c, y: c - 4, 'text-anchor': 'middle', class: 'ring-label' }, `N = ${view.replication_factor}`));
  ring.append(svg('text', { x: c, y: c + 14, 'text-anchor': 'middle', class: 'ring-sub' }, `${view.ring.vnodes_per_node} vnodes/node`));
  $('ring-caption').textContent = `outer: owner at ${arcs.length} points · inner: shares`;
  const legend = clear($('ring-legend'));
  for (const n of nodes) {
    legend.append(el('li', {}, swatch(color[n.id]), `${n.id} `,
      el('b', {}, `${((view.ring.shares[n.id] || 0) * 100).toFixed(1)} %`),
      n.reachable ? null : el('span', { className: 'badge down' }, 'down')));
  }
  paintSwatches(legend);
}

function matrixHead(table, nodes, corner) {
  const head = el('tr', {}, el('th', { className: 'corner' }, corner));
  for (const n of nodes) head.append(el('th', {}, n.id));
  table.append(el('thead', {}, head));
}

function renderMatrix({ view, nodes }) {
  const table = clear($('matrix'));
  matrixHead(table, nodes, 'observer ↓');
  const body = el('tbody');
  for (const observer of nodes) {
    const row = el('tr', {}, el('th', {}, observer.id));
    for (const target of nodes) {
      let seen = 'unreachable';
      let title = `${observer.id} did not answer ${view.node}`;
      if (observer.reachable) {
        const p = observer.status.peers[target.id];
        seen = p ? p.health : 'unknown';
        title = observer.id === target.id
          ? 'itself'
          : `${observer.id} sees ${target.id} ${seen}; last answer ${ago(p && p.last_seen_ms, observer.status.now_ms)}`
            + `; heartbeat: ${(p && p.heartbeat) || 'none'}`;
      }
      const text = seen === 'unreachable' ? '?' : observer.id === target.id ? 'self' : seen;
      row.append(el('td', {
        className: `cell ${seen}${observer.id === target.id ? ' self' : ''}`,
        title,
        data: { observer: observer.id, node: target.id, seen },
      }, text));
    }
    body.append(row);
  }
  table.append(body);
}

function renderHints({ nodes }) {
  const table = clear($('hints'));
  matrixHead(table, nodes, 'holder ↓');
  const body = el('tbody');
  for (const holder of nodes) {
    const row = el('tr', {}, el('th', {}, holder.id));
    for (const owner of nodes) {
      if (!holder.reachable) {
        row.append(el('td', { className: 'cell unreachable' }, '?'));
        continue;
      }
      const held = holder.status.hints_held[owner.id] || 0;
      row.append(el('td', { className: `cell ${held ? 'suspect' : 'zero'}`, data: { holder: holder.id, owner: owner.id, held } },
        holder.id === owner.id ? '—' : held ? fmt(held) : '0'));
    }
    body.append(row);
  }
  table.append(body);
}

// Chart series: [{ t: start_ms, v: value or null }] over the window.
function bucketsOver(status, view) {
  const r = status.requests;
  const spanMs = r.bucket_ms * r.buckets_kept;
  const newest = Math.floor(view.now_ms / r.bucket_ms) * r.bucket_ms;
  const byStart = new Map(r.buckets.map((b) => [b.start_ms, b]));
  const out = [];
  for (let t = newest - spanMs + r.bucket_ms; t <= newest; t += r.bucket_ms) out.push([t, byStart.get(t)]);
  return out;
}

function ratePoints(status, view) {
  const bucketMs = status.requests.bucket_ms;
  return bucketsOver(status, view).map(([t, b]) => {
    // The newest bucket is still filling: divide by the time it has had,
    // but by at least half a bucket, so its first second is not a spike.
    const spanMs = Math.min(bucketMs, Math.max(bucketMs / 2, status.now_ms - t));
    return { t, v: b ? b.requests / (spanMs / 1000) : 0 };
  });
}

function latencyPoints(status, view) {
  return bucketsOver(status, view).map(([t, b]) => ({ t, v: b && b.requests ? b.latency_ms_p99 : null }));
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function renderChart(chart, { view, nodes, color }, points, unit) {
  clear(chart);
  const W = 600;
  const H = 170;
  const left = 44;
  const right = 8;
  const top = 8;
  const bottom = 22;
  const series = nodes.filter((n) => n.reachable).map((n) => ({ id: n.id, pts: points(n.status, view) }));
  const all = series.flatMap((s) => s.pts.map((p) => p.v)).filter((v) => v !== null);
  const max = niceMax(Math.max(0, ...all));
  const spanMs = series.length ? (series[0].pts.length - 1) * (series[0].pts[1] ? series[0].pts[1].t - series[0].pts[0].t : 1) : 1;
  const t0 = series.length ? series[0].pts[0].t : 0;
  const x = (t) => left + ((t - t0) / (spanMs || 1)) * (W - left - right);
  const y = (v) => top + (1 - v / max) * (H - top - bottom);
  for (const frac of [0, 0.5, 1]) {
    const v = max * frac;
    chart.append(svg('line', { x1: left, x2: W - right, y1: y(v), y2: y(v), class: 'grid' }));
    chart.append(svg('text', { x: left - 6, y: y(v) + 4, 'text-anchor': 'end', class: 'axis' }, fmt(v, v < 100 ? 1 : 0)));
  }
  const labels = [[0, '−10 min'], [0.5, '−5 min'], [1, 'now']];
  for (const [frac, text] of labels) {
    const anchor = frac === 0 ? 'start' : frac === 1 ? 'end' : 'middle';
    chart.append(svg('text', { x: left + frac * (W - left - right), y: H - 6, 'text-anchor': anchor, class: 'axis' }, text));
  }
  if (!all.length) {
    chart.append(svg('text', { x: (left + W) / 2, y: H / 2, 'text-anchor': 'middle', class: 'empty' }, 'no client requests in the last 10 min'));
  }
  for (const s of series) {
    // A gap (no data) breaks the line.
    let d = '';
    let pen = 'M';
    for (const p of s.pts) {
      if (p.v === null) {
        pen = 'M';
        continue;
      }
      d += `${pen} ${x(p.t).toFixed(1)} ${y(p.v).toFixed(1)} `;
      pen = 'L';
    }
    if (d) chart.append(svg('path', { d, class: 'line', stroke: color[s.id], 'data-node': s.id }));
    // Dots where there was traffic, so a lone bucket shows too.
    for (const p of s.pts) {
      if (p.v === null || p.v === 0) continue;
      chart.append(svg('circle', { cx: x(p.t).toFixed(1), cy: y(p.v).toFixed(1), r: 2.5, fill: color[s.id] }));
    }
  }
  let lx = left + 8;
  for (const s of series) {
    chart.append(svg('rect', { x: lx, y: top + 2, width: 10, height: 10, fill: color[s.id] }));
    chart.append(svg('text', { x: lx + 14, y: top + 11, class: 'axis' }, s.id));
    lx += 24 + s.id.length * 7;
  }
  chart.dataset.unit = unit;
}

function renderQueues({ nodes, color }) {
  const body = clear($('queues').tBodies[0]);
  for (const n of nodes) {
    const name = el('td', {}, swatch(color[n.id]), n.id);
    if (!n.reachable) {
      body.append(el('tr', {}, name, el('td', { colspan: 5, className: 'muted' }, 'no answer')));
      continue;
    }
    const jobs = n.status.jobs;
    if (jobs.mode !== 'queue' || jobs.error) {
      const why = jobs.error ? `queues do not answer (${jobs.error})` : jobs.mode === 'in-process'
        ? 'background sync off: jobs run inside the API process' : 'no job queues';
      body.append(el('tr', {}, name, el('td', { colspan: 5, className: 'muted' }, why)));
      continue;
    }
    jobs.queues.forEach((q, i) => {
      body.append(el('tr', { data: { node: n.id, queue: q.queue } },
        i === 0 ? name : el('td'),
        el('td', {}, q.queue),
        el('td', { className: `num ${q.depth ? 'busy' : ''}` }, fmt(q.depth)),
        el('td', { className: 'num' }, fmt(q.in_flight)),
        el('td', { className: `num ${q.retrying ? 'alert' : ''}` }, fmt(q.retrying)),
        el('td', { className: 'num' }, fmt(q.workers))));
    });
  }
  paintSwatches(body);
}

// ---- start --------------------------------------------------------------

tokenFromFragment();
$('token').value = readToken();
$('token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  saveToken($('token').value.trim());
  notice('Token saved in this browser; refreshing…');
});
$('token-forget').addEventListener('click', () => {
  saveToken('');
  $('token').value = '';
  notice('Token forgotten.');
});
poll();
