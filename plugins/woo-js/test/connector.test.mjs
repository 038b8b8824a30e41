// Unit tests of the WooCommerce connector under Node, the host imports stubbed.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { sent, answers } from 'berth:connector/http@0.4.0';
import { settings } from 'berth:connector/config@0.4.0';
import { pullOrders, pushInventory, handleWebhook, listings, authorization, refreshCredentials } from '../connector.js';

const encoder = new TextEncoder();
const answer = (status, body, headers = []) => ({
  status,
  headers,
  body: encoder.encode(typeof body === 'string' ? body : JSON.stringify(body)),
});
const order = (id, modified) => ({
  id, status: 'processing', currency: 'EUR', total: '24.60',
  date_created_gmt: '2024-01-01T00:00:00', date_modified_gmt: modified,
  billing: { first_name: 'Li', last_name: 'Wei', phone: '13800001234' },
  line_items: [{ id: id * 10, name: 'Tea Cup', sku: 'SKU-1', quantity: 2, total: '24.60' }],
});
const errorOf = (fn) => {
  try {
    fn();
  } catch (e) {
    return e.payload;
  }
  assert.fail('no error thrown');
};

beforeEach(() => {
  sent.length = 0;
  answers.length = 0;
  settings.clear();
  settings.set('base_url', 'https://shop.example/');
  settings.set('consumer_key', 'ck');
  settings.set('consumer_secret', 'cs');
  settings.set('webhook_secret', 'whs');
});

test('a page is mapped exactly and the cursor is the last key', () => {
  answers.push(answer(200, [order(7, '2024-01-01T00:00:05'), order(8, '2024-01-01T00:00:09')], [['X-WP-TotalPages', '3']]));
  const start = Date.UTC(2024, 0, 1) + 1;
  const page = pullOrders('s', { window: { startMs: BigInt(start), endMs: BigInt(start + 60_000) } });
  const o = page.orders[0];
  assert.equal(o.orderId, '7');
  assert.equal(o.status, 'paid');
  assert.equal(o.totalMinor, 2460n);
  assert.equal(o.lines[0].unitPriceMinor, 1230n);
  assert.equal(o.updatedAtMs, BigInt(Date.UTC(2024, 0, 1, 0, 0, 5)));
  assert.equal(o.buyerNameMasked, 'L*****');
  assert.equal(o.buyerPhoneMasked, '*******1234');
  assert.equal(page.nextPageCursor, `${Date.UTC(2024, 0, 1, 0, 0, 9) / 1000}:8:1`);
  const url = sent[0].url;
  assert.match(url, /^https:\/\/shop\.example\/wp-json\/wc\/v3\/orders\?/);
  assert.match(url, /dates_are_gmt=true/);
  // Strict bounds in seconds around [start, end): after = ceil(start) - 1.
  assert.match(url, /modified_after=2024-01-01T00:00:00&/);
  assert.deepEqual(sent[0].headers[0], ['authorization', `Basic ${Buffer.from('ck:cs').toString('base64')}`]);
});

test('answers map to the errors berth acts on', () => {
  const window = { startMs: 0n, endMs: 1000n };
  answers.push(answer(429, '<html>429</html>', [['Retry-After', '3']]));
  assert.deepEqual(errorOf(() => pullOrders('s', { window })), { tag: 'rate-limited', val: 3000n });
  answers.push(answer(500, '<html>There has been a critical error</html>'));
  assert.equal(errorOf(() => pullOrders('s', { window })).tag, 'transient');
  answers.push(answer(401, { code: 'woocommerce_rest_authentication_error', message: 'Consumer key is invalid.' }));
  assert.equal(errorOf(() => pullOrders('s', { window })).tag, 'auth');
  answers.push(answer(200, 'not json'));
  assert.equal(errorOf(() => pullOrders('s', { window })).tag, 'transient');
  answers.push(Object.assign(new Error('held'), { payload: { tag: 'throttled', val: 1500n } }));
  assert.deepEqual(errorOf(() => pullOrders('s', { window })), { tag: 'rate-limited', val: 1500n });
});

test('stock: one result per SKU, unknown SKUs rejected, a throttle stops the batch', () => {
  answers.push(answer(200, [{ id: 11, sku: 'A' }]));
  answers.push(answer(200, { update: [{ id: 11, stock_quantity: 5 }] }));
  const results = pushInventory('s', [{ sku: 'A', quantity: 5 }, { sku: 'NOPE', quantity: 1 }]);
  assert.deepEqual(results.map((r) => [r.sku, r.accepted]), [['NOPE', false], ['A', true]]);
  assert.deepEqual(JSON.parse(new TextDecoder().decode(sent[1].body)), { update: [{ id: 11, manage_stock: true, stock_quantity: 5 }] });
  answers.push(answer(429, '', [['Retry-After', '2']]));
  assert.deepEqual(errorOf(() => pushInventory('s', [{ sku: 'A', quantity: 6 }])), { tag: 'rate-limited', val: 2000n });
});

test('webhooks are verified before anything else', () => {
  const body = encoder.encode(JSON.stringify(order(7, '2024-01-01T00:00:05')));
  const signature = createHmac('sha256', 'whs').update(body).digest('base64');
  const headers = [['X-WC-Webhook-Topic', 'order.updated'], ['X-WC-Webhook-Signature', signature]];
  const events = handleWebhook('s', { headers, body });
  assert.equal(events[0].tag, 'order-upserted');
  assert.equal(events[0].val.orderId, '7');
  const forged = new Uint8Array([...body, 32]);
  assert.equal(errorOf(() => handleWebhook('s', { headers, body: forged })).tag, 'auth');
  assert.equal(errorOf(() => handleWebhook('s', { headers: [headers[0]], body })).tag, 'auth');
  // The creation ping carries no topic: acknowledged, no events.
  const ping = encoder.encode('webhook_id=3');
  const pingSig = createHmac('sha256', 'whs').update(ping).digest('base64');
  assert.deepEqual(handleWebhook('s', { headers: [['x-wc-webhook-signature', pingSig]], body: ping }), []);
});

test('listings: a simple product is one listing, a variable one a listing per variation', () => {
  answers.push(answer(200, { code: 'EUR' }));
  answers.push(answer(200, [
    { id: 11, name: 'Tea Cup', sku: 'CUP', type: 'simple', price: '10.50', stock_quantity: 4 },
    { id: 12, name: 'Shirt', sku: '', type: 'variable', price: '20', stock_quantity: null },
  ], [['X-WP-TotalPages', '2']]));
  answers.push(answer(200, [
    { id: 121, sku: 'SHIRT-S', price: '20.00', stock_quantity: 3, attributes: [{ name: 'Size', option: 'S' }] },
    { id: 122, sku: 'SHIRT-M', price: '21', stock_quantity: -1, attributes: [{ name: 'Size', option: 'M' }] },
  ]));
  const page = listings('s', { cursor: undefined, limit: 50 });
  assert.equal(page.listings.length, 3);
  assert.deepEqual(page.listings[0], { sku: 'CUP', itemId: '11', variantId: undefined, title: 'Tea Cup', quantity: 4n, priceMinor: 1050n, currency: 'EUR' });
  assert.deepEqual(page.listings[2], { sku: 'SHIRT-M', itemId: '12', variantId: '122', title: 'Shirt (M)', quantity: -1n, priceMinor: 2100n, currency: 'EUR' });
  assert.equal(page.nextCursor, '2');
  assert.match(sent[1].url, /products\?per_page=50&page=1&/);
  assert.match(sent[2].url, /products\/12\/variations/);
  // The last page ends the listing; a bad cursor is the host's mistake.
  answers.push(answer(200, { code: 'EUR' }));
  answers.push(answer(200, [], [['X-WP-TotalPages', '2']]));
  assert.equal(listings('s', { cursor: '2', limit: 50 }).nextCursor, undefined);
  assert.equal(errorOf(() => listings('s', { cursor: 'x', limit: 50 })).tag, 'invalid-input');
});

test('static consumer keys: no refresh, no OAuth', () => {
  assert.deepEqual(authorization(), { refreshes: false, oauth: false });
  assert.equal(errorOf(() => refreshCredentials('s', {})).tag, 'revoked');
});
