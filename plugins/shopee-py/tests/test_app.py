"""Native unit tests of the Shopee connector: the generated bindings are plain Python,
so the host imports are replaced with Python versions and the connector runs as is.
Run with test.sh (it generates the bindings first)."""

import base64
import hashlib
import hmac
import json
import unittest

from componentize_py_types import Err
from wit_world.imports import config, crypto, http, kv, metrics, types

import app

SETTINGS = {}
SENT = []
ANSWERS = []
STORE = {}


def fake_send(req):
    SENT.append(req)
    return ANSWERS.pop(0)


config.get = lambda key: SETTINGS.get(key)
crypto.hmac_sha256 = lambda key, data: hmac.new(bytes(key), bytes(data), hashlib.sha256).digest()
crypto.hex_encode = lambda data, upper: bytes(data).hex().upper() if upper else bytes(data).hex()
crypto.base64_encode = lambda data: base64.b64encode(bytes(data)).decode()
http.send = fake_send
kv.get = STORE.get
kv.set = STORE.__setitem__
metrics.counter_add = lambda name, labels, value: None


def answer(status, body, headers=()):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.Response(status=status, headers=list(headers), body=data)


def error_of(call):
    try:
        call()
    except Err as e:
        return e.value
    raise AssertionError("no error raised")


class ShopeeTest(unittest.TestCase):
    def setUp(self):
        SETTINGS.clear()
        SETTINGS.update({
            "base_url": "https://partner.shopeemobile.com",
            "partner_id": "2001887",
            "partner_key": "test_secret",
            "shop_id": "14701711",
            "access_token": "tok",
            "webhook_url": "https://berth.example/hook",
        })
        SENT.clear()
        ANSWERS.clear()
        STORE.clear()

    def test_signature_matches_the_reference_example(self):
        app.time.time = lambda: 1704110400.5
        url = app.Shop().url("/api/v2/order/get_order_list", [("page_size", 1)])
        # platforms.md 7.1: base 2001887/api/v2/order/get_order_list1704110400tok14701711
        self.assertIn("sign=eb67a204df271bf4d8ba6d5ec60f2c5a6f956468952fd596cb953afa18c4a5e1", url)
        self.assertIn("timestamp=1704110400&", url)

    def test_a_page_is_listed_then_detailed_and_mapped(self):
        ANSWERS.append(answer(200, {"error": "", "response": {"more": True, "next_cursor": "c2", "order_list": [{"order_sn": "SP1"}]}}))
        ANSWERS.append(answer(200, {"error": "", "response": {"order_list": [{
            "order_sn": "SP1", "order_status": "READY_TO_SHIP", "create_time": 100, "update_time": 160,
            "currency": "SGD", "total_amount": 12.3, "recipient_address": {"name": "Li Wei", "phone": "13800001234"},
            "item_list": [{"order_item_id": 7, "item_name": "Tea Cup", "model_sku": "SKU-1",
                           "model_quantity_purchased": 3, "model_discounted_price": 4.1}],
        }]}}))
        req = types.PullRequest(window=types.TimeWindow(start_ms=100_000, end_ms=200_000), page_cursor="c1")
        page = app.WitWorld().pull_orders("s", req)
        self.assertEqual(page.next_page_cursor, "c2")
        o = page.orders[0]
        self.assertEqual((o.order_id, o.status, o.total_minor, o.updated_at_ms), ("SP1", types.OrderStatus.PAID, 1230, 160_000))
        self.assertEqual((o.lines[0].unit_price_minor, o.lines[0].quantity, o.lines[0].sku), (410, 3, "SKU-1"))
        self.assertEqual((o.buyer_name_masked, o.buyer_phone_masked), ("L*****", "*******1234"))
        # [100 000, 200 000) ms is 100..199 s, inclusive; the cursor goes along.
        self.assertIn("time_from=100&time_to=199", SENT[0].url)
        self.assertIn("cursor=c1", SENT[0].url)
        self.assertIn("order_sn_list=SP1", SENT[1].url)

    def test_listings_page_items_then_their_models(self):
        ANSWERS.append(answer(200, {"error": "", "response": {"item": [{"item_id": 7}, {"item_id": 8}], "has_next_page": True, "next_offset": 2}}))
        ANSWERS.append(answer(200, {"error": "", "response": {"item_list": [
            {"item_id": 7, "item_name": "Tea Cup", "has_model": True},
            {"item_id": 8, "item_name": "Lamp", "has_model": False, "item_sku": "LAMP",
             "price_info": [{"currency": "SGD", "current_price": 0.99}],
             "stock_info_v2": {"seller_stock": [{"stock": 2}, {"stock": 3}]}},
        ]}}))
        ANSWERS.append(answer(200, {"error": "", "response": {"model": [
            {"model_id": 70, "model_sku": "CUP-S", "model_name": "S", "price_info": [{"currency": "SGD", "current_price": 12.5}],
             "stock_info_v2": {"summary_info": {"total_available_stock": 4}, "seller_stock": [{"stock": 9}]}},
        ]}}))
        page = app.WitWorld().listings("s", types.ListingRequest(cursor=None, limit=2))
        self.assertEqual(page.next_cursor, "2")
        cup, lamp = page.listings
        self.assertEqual((cup.sku, cup.item_id, cup.variant_id, cup.title, cup.quantity, cup.price_minor, cup.currency),
                         ("CUP-S", "7", "70", "Tea Cup (S)", 4, 1250, "SGD"))
        self.assertEqual((lamp.sku, lamp.variant_id, lamp.quantity, lamp.price_minor), ("LAMP", None, 5, 99))
        self.assertIn("offset=0&page_size=2", SENT[0].url)
        self.assertIn("item_id_list=7%2C8", SENT[1].url)
        # A cursor that is not an offset is the host's mistake.
        self.assertIsInstance(error_of(lambda: app.WitWorld().listings("s", types.ListingRequest(cursor="x", limit=2))), types.ConnectorError_InvalidInput)

    def test_answers_map_to_the_errors_berth_acts_on(self):
        shop = app.Shop()
        cases = [
            (answer(429, b""), types.ConnectorError_RateLimited(1000)),
            (answer(200, {"error": "error_too_many_request", "message": "slow"}), types.ConnectorError_RateLimited(1000)),
            (answer(403, {"error": "error_auth", "message": "Invalid access_token."}), types.ConnectorError_Auth),
            (answer(503, b"<html>"), types.ConnectorError_Transient),
            (answer(200, b"<html>oops"), types.ConnectorError_Transient),
            (answer(200, {"error": "error_param", "message": "bad"}), types.ConnectorError_Permanent),
        ]
        for resp, expected in cases:
            got = error_of(lambda: shop.answer("/api/v2/x", resp))
            if isinstance(expected, type):
                self.assertIsInstance(got, expected, resp)
            else:
                self.assertEqual(got, expected, resp)

    def test_an_expired_token_is_an_auth_error_that_says_so(self):
        shop = app.Shop()
        got = error_of(lambda: shop.answer("/api/v2/x", answer(403, {"error": "invalid_acceess_token", "message": "Invalid access_token."})))
        self.assertIsInstance(got, types.ConnectorError_Auth)
        self.assertIn("access token expired", got.value)

    def test_a_refresh_is_signed_and_returns_the_rotated_tokens(self):
        app.time.time = lambda: 1704110400.5
        ANSWERS.append(answer(200, {"error": "", "message": "", "access_token": "acc-2", "refresh_token": "ref-2", "expire_in": 14400}))
        current = types.Credentials(access_token="tok", refresh_token="ref-1", access_expires_ms=1, refresh_expires_ms=None, authorization_expires_ms=77)
        new = app.WitWorld().refresh_credentials("acme", current)
        self.assertEqual((new.access_token, new.refresh_token), ("acc-2", "ref-2"))
        self.assertEqual(new.access_expires_ms, 1704110400500 + 14400 * 1000)
        self.assertEqual(new.authorization_expires_ms, 77)
        req = SENT[0]
        self.assertTrue(req.url.startswith("https://partner.shopeemobile.com/api/v2/auth/access_token/get?partner_id=2001887&timestamp=1704110400&sign="))
        expected = hmac.new(b"test_secret", b"2001887/api/v2/auth/access_token/get1704110400", hashlib.sha256).hexdigest()
        self.assertTrue(req.url.endswith(f"sign={expected}"), req.url)
        self.assertEqual(json.loads(bytes(req.body)), {"refresh_token": "ref-1", "partner_id": 2001887, "shop_id": 14701711})

    def test_a_refused_refresh_is_revoked_and_an_outage_transient(self):
        current = types.Credentials(access_token="tok", refresh_token="spent", access_expires_ms=None, refresh_expires_ms=None, authorization_expires_ms=None)
        ANSWERS.append(answer(403, {"error": "error_auth", "message": "Invalid refresh_token."}))
        self.assertIsInstance(error_of(lambda: app.WitWorld().refresh_credentials("acme", current)), types.RefreshError_Revoked)
        ANSWERS.append(answer(503, b"<html>"))
        self.assertIsInstance(error_of(lambda: app.WitWorld().refresh_credentials("acme", current)), types.RefreshError_Transient)
        ANSWERS.append(answer(200, {"error": "", "access_token": "acc"}))
        self.assertIsInstance(error_of(lambda: app.WitWorld().refresh_credentials("acme", current)), types.RefreshError_Transient)

    def test_the_consent_page_is_signed_and_carries_state_in_the_redirect(self):
        app.time.time = lambda: 1704110400.5
        url = app.WitWorld().consent_url("new-shop", "st-1", "https://berth.example/v1/oauth/shopee/callback")
        expected = hmac.new(b"test_secret", b"2001887/api/v2/shop/auth_partner1704110400", hashlib.sha256).hexdigest()
        self.assertEqual(
            url,
            "https://partner.shopeemobile.com/api/v2/shop/auth_partner?partner_id=2001887&timestamp=1704110400"
            f"&sign={expected}&redirect=https%3A%2F%2Fberth.example%2Fv1%2Foauth%2Fshopee%2Fcallback%3Fstate%3Dst-1",
        )

    def test_a_code_is_exchanged_for_tokens_and_the_shop_id(self):
        app.time.time = lambda: 1704110400.5
        del SETTINGS["shop_id"], SETTINGS["access_token"]
        ANSWERS.append(answer(200, {"error": "", "message": "", "access_token": "acc-1", "refresh_token": "ref-1", "expire_in": 14400}))
        got = app.WitWorld().exchange_code("new-shop", [("code", "c0de"), ("shop_id", "5550001")], "https://berth.example/cb")
        self.assertEqual((got.credentials.access_token, got.credentials.refresh_token), ("acc-1", "ref-1"))
        self.assertEqual(got.credentials.authorization_expires_ms, 1704110400500 + 365 * 86_400 * 1000)
        self.assertEqual(got.settings, [("shop_id", "5550001")])
        req = SENT[0]
        self.assertTrue(req.url.startswith("https://partner.shopeemobile.com/api/v2/auth/token/get?partner_id=2001887&timestamp=1704110400&sign="))
        self.assertEqual(json.loads(bytes(req.body)), {"code": "c0de", "shop_id": 5550001, "partner_id": 2001887})
        # No code (the merchant declined) or no shop: revoked, nothing sent.
        self.assertIsInstance(error_of(lambda: app.WitWorld().exchange_code("s", [("shop_id", "1")], "u")), types.RefreshError_Revoked)
        self.assertIsInstance(error_of(lambda: app.WitWorld().exchange_code("s", [("code", "c"), ("main_account_id", "9")], "u")), types.RefreshError_Revoked)
        self.assertEqual(len(SENT), 1)

    def test_pushes_are_verified_against_the_callback_url_and_body(self):
        body = json.dumps({"shop_id": 14701711, "code": 3, "data": {"ordersn": "SP9"}}).encode()
        good = hmac.new(b"test_secret", b"https://berth.example/hook|" + body, hashlib.sha256).hexdigest()
        events = app.WitWorld().handle_webhook("s", types.WebhookRequest(headers=[("Authorization", good)], body=body))
        self.assertEqual(events, [types.Event_OrderChanged("SP9")])
        forged = types.WebhookRequest(headers=[("authorization", good)], body=body + b" ")
        self.assertIsInstance(error_of(lambda: app.WitWorld().handle_webhook("s", forged)), types.ConnectorError_Auth)
        unsigned = types.WebhookRequest(headers=[], body=body)
        self.assertIsInstance(error_of(lambda: app.WitWorld().handle_webhook("s", unsigned)), types.ConnectorError_Auth)

    def test_a_missing_setting_names_the_key(self):
        del SETTINGS["partner_key"]
        err = error_of(app.Shop)
        self.assertIsInstance(err, types.ConnectorError_Permanent)
        self.assertIn("`partner_key`", err.value)


if __name__ == "__main__":
    unittest.main()
