// berth connector for WooCommerce's REST API (wc/v3), written in JavaScript.
//
// Built into a component with componentize-js (see build.sh and sdk/docs/javascript.md).
//
// WooCommerce is the long tail: every shop is its own WordPress site, so the manifest
// names no hosts and ops grant each site's host in berth.toml (`extra_hosts`).
//
// Orders: `GET orders?modified_after&modified_before&dates_are_gmt=true&orderby=modified
// &order=asc`. WooCommerce pages by page number (`X-WP-TotalPages`), which skips orders
// when one modified mid-walk moves out of the result set; this connector pages by key
// instead: its cursor is the last (modified second, id) it returned, and the next page
// asks again from that second and drops what it already gave.
//
// Throttling is the site's WAF: HTTP 429 with `Retry-After` in seconds -> rate-limited.
// A PHP fatal error is an HTML page with HTTP 500 -> transient.
//
// Stock: `GET products?sku=a,b` to find product ids, then `POST products/batch` with
// `update: [{id, stock_quantity}]` (at most 100 per call), one result per entry.
//
// Webhooks: `X-WC-Webhook-Signature` = base64 HMAC-SHA256(webhook secret, raw body),
// compared in constant time. `order.*` topics carry the whole order -> order-upserted;
// the creation ping (`webhook_id=N`) and other topics are acknowledged without events.
//
// Listings (0.4.0): `GET products?per_page&page` (the cursor is the page number, up to
// `X-WP-TotalPages`); a simple product is one listing, a variable one a listing per
// variation (`products/{id}/variations`). Prices are decimal strings in the store's
// currency (`data/currencies/current`, or the shop setting `currency`).
//
// Credentials are static consumer keys: `authorization` says so, and the refresh and
// OAuth calls (0.3.0) answer that they are not offered.
//
// Shop config: `base_url` (the site, e.g. https://shop.example.com), secrets
// `consumer_key`, `consumer_secret`, `webhook_secret`; optional `page_size` (1..100).

import { send } from 'berth:connector/http@0.4.0';
import { get as configGet } from 'berth:connector/config@0.4.0';
import { hmacSha256, base64Encode } from 'berth:connector/crypto@0.4.0';
import { counterAdd } from 'berth:connector/metrics@0.4.0';

const VERSION = '0.1.0';
const MAX_PAGE = 100;
const MAX_BATCH = 100;

const STATUSES = {
  pending: 'unpaid',
  processing: 'paid',
  'on-hold': 'other',
  completed: 'completed',
  cancelled: 'cancelled',
  refunded: 'refunded',
  failed: 'other',
};

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// A connector error the host acts on: thrown, it becomes the export's `err`.
class ConnectorError extends Error {
  constructor(tag, val) {
    super(`${tag}: ${val}`);
    this.payload = { tag, val };
  }
}
const rateLimited = (ms) => new ConnectorError('rate-limited', BigInt(Math.max(1, Math.ceil(ms))));
const transient = (msg) => new ConnectorError('transient', msg);
const permanent = (msg) => new ConnectorError('permanent', msg);
const authError = (msg) => new ConnectorError('auth', msg);
const invalidInput = (msg) => new ConnectorError('invalid-input', msg);

function setting(key) {
  const value = configGet(key);
  if (value === undefined || value === null) {
    throw permanent(`shop config is missing \`${key}\`: add it under the shop's [shops.*.settings] or [shops.*.secrets] in berth.toml`);
  }
  return value;
}

function pageSize() {
  const value = configGet('page_size');
  if (value === undefined || value === null) return MAX_PAGE;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > MAX_PAGE) {
    throw permanent(`page_size \`${value}\` must be a whole number from 1 to ${MAX_PAGE}`);
  }
  return n;
}

function header(resp, name) {
  const found = resp.headers.find(([k]) => k.toLowerCase() === name);
  return found ? found[1] : undefined;
}

// Send through the host; host refusals become connector errors.
function call(method, url, body) {
  const s = settings();
  const headers = [
    ['authorization', `Basic ${base64Encode(encoder.encode(`${s.key}:${s.secret}`))}`],
    ['accept', 'application/json'],
  ];
  if (body !== undefined) headers.push(['content-type', 'application/json']);
  let resp;
  try {
    resp = send({ method, url, headers, body: body === undefined ? new Uint8Array() : encoder.encode(JSON.stringify(body)), timeoutMs: undefined });
  } catch (e) {
    const err = e && e.payload !== undefined ? e.payload : e;
    switch (err && err.tag) {
      case 'throttled': throw rateLimited(Number(err.val));
      case 'denied': throw permanent(`host refused the request: ${err.val}`);
      case 'timeout': throw transient('timed out calling the shop');
      case 'connection': throw transient(`connection failed: ${err.val}`);
      case 'too-large': throw transient(`response exceeded the host's ${err.val}-byte cap`);
      default: throw invalidInput(`request refused: ${err && err.val}`);
    }
  }
  if (resp.status === 429) {
    const secs = Number(header(resp, 'retry-after'));
    throw rateLimited(Number.isFinite(secs) && secs > 0 ? secs * 1000 : 1000);
  }
  if (resp.status >= 500) throw transient(`the shop answered ${resp.status} (a PHP or gateway error)`);
  let data;
  try {
    data = JSON.parse(decoder.decode(resp.body));
  } catch (_) {
    if (resp.status >= 400) throw permanent(`the shop answered ${resp.status} with a body that is not JSON`);
    throw transient(`the shop answered ${resp.status} with a body that is not JSON`);
  }
  if (resp.status === 401 || resp.status === 403) {
    throw authError(`the shop refused the consumer key: ${data && data.code}: ${data && data.message}`);
  }
  if (resp.status >= 400) throw permanent(`the shop answered ${resp.status}: ${data && data.code}: ${data && data.message}`);
  return { data, resp };
}

// Read on every request: a few host calls, and nothing outlives the call's shop.
function settings() {
  return {
    base: setting('base_url').replace(/\/+$/, ''),
    key: setting('consumer_key'),
    secret: setting('consumer_secret'),
  };
}

function api(path) {
  return `${settings().base}/wp-json/wc/v3/${path}`;
}

// WooCommerce GMT dates: `2024-01-01T00:00:00` without an offset.
function gmt(seconds) {
  return new Date(seconds * 1000).toISOString().slice(0, 19);
}

function parseGmt(text, what) {
  const ms = Date.parse(`${text}Z`);
  if (typeof text !== 'string' || !Number.isFinite(ms)) throw transient(`the shop sent an unreadable ${what}: ${text}`);
  return ms;
}

// "12.30" -> 1230, exactly (no floating point).
function parseMinor(text) {
  const m = /^(-?)(\d*)(?:\.(\d{0,2}))?$/.exec(String(text).trim());
  if (!m || (m[2] === '' && m[3] === undefined)) throw transient(`the shop sent an unreadable amount: ${text}`);
  const minor = BigInt(m[2] || '0') * 100n + BigInt((m[3] || '').padEnd(2, '0'));
  return m[1] === '-' ? -minor : minor;
}

function maskName(name) {
  const chars = Array.from(name.trim());
  if (chars.length === 0) return '';
  return chars[0] + '*'.repeat(Math.max(chars.length - 1, 1));
}

function maskPhone(phone) {
  const digits = Array.from(String(phone)).filter((c) => c >= '0' && c <= '9');
  if (digits.length <= 4) return '*'.repeat(digits.length);
  return '*'.repeat(digits.length - 4) + digits.slice(-4).join('');
}

function mapOrder(o) {
  if (!o || typeof o !== 'object' || o.id === undefined) throw transient('the shop sent an order without an id');
  const lines = (o.line_items || []).map((l) => {
    const quantity = Number(l.quantity);
    if (!Number.isInteger(quantity) || quantity <= 0) throw transient(`order ${o.id} has a line with quantity ${l.quantity}`);
    return {
      lineId: String(l.id),
      sku: l.sku || '',
      title: l.name || '',
      quantity,
      unitPriceMinor: parseMinor(l.total) / BigInt(quantity),
    };
  });
  const billing = o.billing || {};
  return {
    orderId: String(o.id),
    status: STATUSES[o.status] || 'other',
    platformStatus: String(o.status),
    createdAtMs: BigInt(parseGmt(o.date_created_gmt, 'creation date')),
    updatedAtMs: BigInt(parseGmt(o.date_modified_gmt, 'modification date')),
    currency: String(o.currency || ''),
    totalMinor: parseMinor(o.total),
    lines,
    buyerNameMasked: maskName(`${billing.first_name || ''} ${billing.last_name || ''}`),
    buyerPhoneMasked: maskPhone(billing.phone || ''),
    rawJson: JSON.stringify(o),
  };
}

// Cursor: "<last modified second>:<last id>:<page>" (page > 1 only when one second holds
// more orders than a page).
function parseCursor(text) {
  const parts = String(text).split(':').map(Number);
  if (parts.length !== 3 || parts.some((n) => !Number.isInteger(n))) throw invalidInput(`page cursor \`${text}\` is not one of mine`);
  return { sec: parts[0], id: parts[1], page: parts[2] };
}

export function manifest() {
  return {
    platform: 'woocommerce',
    connectorVersion: VERSION,
    witVersion: '0.4.0',
    capabilities: ['orders', 'inventory', 'webhooks', 'products'],
    // Every site is its own host: ops grant it with `extra_hosts`.
    allowedHosts: [],
    defaultRateLimit: { requestsPerMinute: 300, burst: 5 },
    maxWindowMs: undefined,
    requiredConfig: ['base_url', 'consumer_key', 'consumer_secret'],
  };
}

// Static consumer keys: no refresh, no OAuth onboarding (0.3.0's calls).
class RefreshError extends Error {
  constructor(tag, val) {
    super(`${tag}: ${val}`);
    this.payload = { tag, val };
  }
}

export function authorization() {
  return { refreshes: false, oauth: false };
}

export function refreshCredentials(_shop, _current) {
  throw new RefreshError('revoked', 'WooCommerce consumer keys do not expire: put new ones in the shop config');
}

export function consentUrl(_shop, _state, _redirectUri) {
  throw permanent('this connector does not onboard shops by OAuth: create a consumer key in WooCommerce');
}

export function exchangeCode(_shop, _callback, _redirectUri) {
  throw new RefreshError('revoked', 'this connector does not onboard shops by OAuth');
}

function storeCurrency() {
  const configured = configGet('currency');
  if (configured) return configured;
  const { data } = call('get', api('data/currencies/current'));
  if (!data || typeof data.code !== 'string' || data.code === '') throw transient('the shop sent no currency code');
  return data.code;
}

function listingOf(product, variation, currency) {
  const from = variation || product;
  const options = variation && Array.isArray(variation.attributes) ? variation.attributes.map((a) => a.option).filter(Boolean) : [];
  return {
    sku: from.sku || '',
    itemId: String(product.id),
    variantId: variation ? String(variation.id) : undefined,
    title: options.length ? `${product.name} (${options.join(', ')})` : String(product.name || ''),
    quantity: BigInt(Number.isInteger(from.stock_quantity) ? from.stock_quantity : 0),
    priceMinor: parseMinor(from.price === '' || from.price === undefined ? '0' : String(from.price)),
    currency,
  };
}

export function listings(_shop, req) {
  let page = 1;
  if (req.cursor !== undefined && req.cursor !== null) {
    page = Number(req.cursor);
    if (!Number.isInteger(page) || page < 1) throw invalidInput(`listing cursor \`${req.cursor}\` is not a page number`);
  }
  const size = Math.max(1, Math.min(Number(req.limit), MAX_PAGE));
  const currency = storeCurrency();
  const { data, resp } = call('get', api(`products?per_page=${size}&page=${page}&orderby=id&order=asc`));
  if (!Array.isArray(data)) throw transient('the shop sent a product list that is not a list');
  const out = [];
  for (const p of data) {
    if (p.type === 'variable') {
      const { data: variations } = call('get', api(`products/${p.id}/variations?per_page=${MAX_PAGE}`));
      if (!Array.isArray(variations)) throw transient(`the shop sent variations of product ${p.id} that are not a list`);
      for (const v of variations) out.push(listingOf(p, v, currency));
    } else {
      out.push(listingOf(p, undefined, currency));
    }
  }
  const totalPages = Number(header(resp, 'x-wp-totalpages'));
  const more = Number.isFinite(totalPages) ? page < totalPages : data.length === size;
  return { listings: out, nextCursor: more ? String(page + 1) : undefined };
}

export function check(_shop) {
  call('get', api('orders?per_page=1&_fields=id'));
  return { ok: true, message: 'orders endpoint answered' };
}

export function pullOrders(_shop, req) {
  const start = Number(req.window.startMs);
  const end = Number(req.window.endMs);
  if (end <= start) throw invalidInput('empty time window');
  const size = pageSize();
  // [start, end) in ms; WooCommerce's bounds are strict, in seconds.
  const firstSec = Math.ceil(start / 1000);
  const beforeSec = Math.ceil(end / 1000);
  const after = req.pageCursor ? parseCursor(req.pageCursor) : { sec: firstSec, id: -1, page: 1 };
  const url = api(`orders?status=any&dates_are_gmt=true&orderby=modified&order=asc&per_page=${size}&page=${after.page}`
    + `&modified_after=${gmt(after.sec - 1)}&modified_before=${gmt(beforeSec)}`);
  const { data, resp } = call('get', url);
  if (!Array.isArray(data)) throw transient('the shop sent an order list that is not a list');
  const totalPages = Number(header(resp, 'x-wp-totalpages'));
  const fresh = data.filter((o) => {
    const sec = Math.floor(parseGmt(o.date_modified_gmt, 'modification date') / 1000);
    return sec > after.sec || (sec === after.sec && Number(o.id) > after.id);
  });
  const orders = fresh.map(mapOrder);
  let next;
  if (Number.isFinite(totalPages) ? after.page < totalPages : data.length === size) {
    const last = data[data.length - 1];
    const lastSec = Math.floor(parseGmt(last.date_modified_gmt, 'modification date') / 1000);
    // A full page within one second: walk that second by page number.
    next = lastSec === after.sec && fresh.length < data.length || lastSec === after.sec && after.page > 1
      ? `${after.sec}:${after.id}:${after.page + 1}`
      : `${lastSec}:${Number(last.id)}:1`;
  }
  counterAdd('orders_pulled', [], BigInt(orders.length));
  return { orders, nextPageCursor: next };
}

export function pushInventory(_shop, updates) {
  const done = [];
  for (let i = 0; i < updates.length; i += MAX_BATCH) {
    const chunk = updates.slice(i, i + MAX_BATCH);
    try {
      pushChunk(chunk, done);
    } catch (e) {
      if (e instanceof ConnectorError && (e.payload.tag === 'permanent' || e.payload.tag === 'invalid-input')) {
        for (const u of chunk) done.push({ sku: u.sku, accepted: false, message: e.payload.val });
        continue;
      }
      // Throttled, auth, outage: stop here; what is done is reported, the rest stays due.
      if (done.length === 0) throw e;
      break;
    }
  }
  counterAdd('stock_pushed', [], BigInt(done.filter((r) => r.accepted).length));
  return done;
}

function pushChunk(chunk, done) {
  const skus = chunk.map((u) => u.sku).filter((s) => !s.includes(','));
  const { data } = call('get', api(`products?per_page=${MAX_PAGE}&sku=${encodeURIComponent(skus.join(','))}`));
  if (!Array.isArray(data)) throw transient('the shop sent a product list that is not a list');
  const ids = new Map(data.filter((p) => p && p.sku).map((p) => [p.sku, p.id]));
  const known = [];
  for (const u of chunk) {
    if (ids.has(u.sku)) known.push(u);
    else done.push({ sku: u.sku, accepted: false, message: 'the shop has no product with this SKU' });
  }
  if (known.length === 0) return;
  const { data: answer } = call('post', api('products/batch'), {
    update: known.map((u) => ({ id: ids.get(u.sku), manage_stock: true, stock_quantity: u.quantity })),
  });
  const results = answer && Array.isArray(answer.update) ? answer.update : [];
  known.forEach((u, index) => {
    const r = results[index];
    if (!r) return; // no answer for it: stays due
    if (r.error) done.push({ sku: u.sku, accepted: false, message: `${r.error.code}: ${r.error.message}` });
    else done.push({ sku: u.sku, accepted: true, message: undefined });
  });
}

function sameText(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i += 1) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

export function handleWebhook(_shop, req) {
  const secret = configGet('webhook_secret');
  if (secret === undefined || secret === null) throw permanent('no `webhook_secret` (the secret set on the WooCommerce webhook) is configured for this shop');
  const find = (name) => {
    const h = req.headers.find(([k]) => k.toLowerCase() === name);
    return h ? h[1] : undefined;
  };
  const signature = find('x-wc-webhook-signature');
  if (signature === undefined) throw authError('the request has no X-WC-Webhook-Signature header');
  const expected = base64Encode(hmacSha256(encoder.encode(secret), req.body));
  if (!sameText(expected, signature.trim())) throw authError('X-WC-Webhook-Signature does not match the body');
  const topic = find('x-wc-webhook-topic') || '';
  if (!topic.startsWith('order.')) return [];
  let order;
  try {
    order = JSON.parse(decoder.decode(req.body));
  } catch (_) {
    throw invalidInput('webhook body is not JSON');
  }
  if (topic === 'order.deleted') return [{ tag: 'order-changed', val: String(order.id) }];
  try {
    return [{ tag: 'order-upserted', val: mapOrder(order) }];
  } catch (e) {
    if (e instanceof ConnectorError) throw invalidInput(`webhook body is not a WooCommerce order: ${e.payload.val}`);
    throw e;
  }
}
