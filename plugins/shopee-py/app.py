"""berth connector for the Shopee Open Platform (v2), written in Python.

Built into a component with componentize-py (see build.sh and sdk/docs/python.md).

Every Shop API call is signed: ``sign`` = lower-case hex HMAC-SHA256(partner_key,
partner_id + api_path + timestamp + access_token + shop_id), with ``timestamp`` in Unix
seconds (valid five minutes). The host's crypto import does the HMAC natively.

Orders: ``get_order_list`` over ``update_time`` (at most 15 days per call, cursor paging
with ``more``/``next_cursor``), then ``get_order_detail`` for the order numbers of that
page (at most 50, so pages are at most 50). Throttling (HTTP 429 or
``error_too_many_request``) becomes ``rate-limited``; Shopee sends no wait, so the
connector asks for ``throttle_wait_ms`` (default 1000).

Stock: ``update_stock`` sets absolute ``seller_stock`` per item and model. Shopee
addresses stock by item and model id, not SKU: the connector maps SKU -> (item, model)
from ``get_item_list`` + ``get_model_list`` and keeps the map in host kv, refreshing it
once per batch when a SKU is unknown.

Listings (berth:connector 0.4.0): ``get_item_list`` pages through the items on sale by
offset (the cursor), ``get_item_base_info`` names up to 50 of them at once, and
``get_model_list`` gives each item's models with SKU, price and stock: one listing per
model (per item for one without models), the stock Shopee sells
(``summary_info.total_available_stock``, else the sum of ``seller_stock``).

Push: ``Authorization`` = hex HMAC-SHA256(partner_key, callback_url + "|" + body); the
callback URL is the shop setting ``webhook_url``. Order-status pushes (code 3) become
``order-changed``; the host then pulls the order.

Credentials (berth:connector 0.3.0): Shopee access tokens live four hours and each
refresh (``POST /api/v2/auth/access_token/get``, signed as a public call: partner_id +
api_path + timestamp) returns a new access token *and a new refresh token*, the old one
spent. ``refresh_credentials`` makes that call; berth decides when, one at a time per
shop, and stores the answer before using it. An expired access token comes back as
``invalid_acceess_token`` (Shopee's spelling), which becomes an ``auth`` error saying the
token expired, so berth refreshes. A new shop is onboarded by OAuth: ``consent_url``
builds the ``shop/auth_partner`` link (``state`` rides in the redirect, which Shopee
keeps), and ``exchange_code`` trades the ``code`` and ``shop_id`` Shopee sends back
through ``POST /api/v2/auth/token/get`` for the first tokens and the shop's ``shop_id``.

Shop config: ``base_url`` (e.g. https://partner.shopeemobile.com), ``partner_id``,
``shop_id``, secrets ``partner_key`` and ``access_token``; optional ``webhook_url``,
``page_size`` (1..50, default 50), ``throttle_wait_ms``.
"""

import json
import time

from componentize_py_types import Err
from wit_world import WitWorld as _WitWorld
from wit_world.imports import config, crypto, http, kv, log, metrics, types

VERSION = "0.1.0"
WIT_VERSION = "0.4.0"
# Shopee does not say when a refresh token ends: 30 days after it was issued.
REFRESH_LIFETIME_MS = 30 * 86_400 * 1000
# A merchant's authorization of the app ends at most 365 days after it was given.
AUTHORIZATION_LIFETIME_MS = 365 * 86_400 * 1000
MAX_WINDOW_MS = 15 * 86_400 * 1000
MAX_PAGE = 50

# Shopee order_status -> berth status.
STATUSES = {
    "UNPAID": types.OrderStatus.UNPAID,
    "READY_TO_SHIP": types.OrderStatus.PAID,
    "PROCESSED": types.OrderStatus.PAID,
    "RETRY_SHIP": types.OrderStatus.PAID,
    "SHIPPED": types.OrderStatus.SHIPPED,
    "TO_CONFIRM_RECEIVE": types.OrderStatus.DELIVERED,
    "COMPLETED": types.OrderStatus.COMPLETED,
    "IN_CANCEL": types.OrderStatus.OTHER,
    "CANCELLED": types.OrderStatus.CANCELLED,
    "TO_RETURN": types.OrderStatus.REFUNDED,
}

# Currencies Shopee quotes without minor units.
NO_MINOR_UNITS = {"IDR", "VND", "JPY", "KRW", "CLP"}

# Error codes that mean the credentials are wrong or expired.
AUTH_ERRORS = {"error_auth", "error_sign", "error_partner_id", "error_shop_id", "error_permission", "invalid_access_token"}
# The access token ran out (Shopee spells the code both ways): berth refreshes.
EXPIRED_TOKEN_ERRORS = {"invalid_acceess_token", "invalid_access_token"}


def fail(error):
    """Raise a connector error the host acts on."""
    raise Err(error)


def rate_limited(ms):
    return types.ConnectorError_RateLimited(ms)


def transient(message):
    return types.ConnectorError_Transient(message)


def permanent(message):
    return types.ConnectorError_Permanent(message)


def auth(message):
    return types.ConnectorError_Auth(message)


def invalid_input(message):
    return types.ConnectorError_InvalidInput(message)


def setting(key, required=True):
    value = config.get(key)
    if value is None and required:
        fail(permanent(
            f"shop config is missing `{key}`: add it under the shop's [shops.*.settings] or [shops.*.secrets] in berth.toml"
        ))
    return value


def int_setting(key, default, low, high):
    value = config.get(key)
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        n = None
    if n is None or not low <= n <= high:
        fail(permanent(f"`{key}` = `{value}` must be a whole number from {low} to {high}"))
    return n


def url_encode(text):
    safe = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"
    return "".join(c if c in safe else "".join(f"%{b:02X}" for b in c.encode()) for c in str(text))


def hmac_hex(key, data):
    return crypto.hex_encode(crypto.hmac_sha256(key.encode(), data), False)


def same(a, b):
    """Constant-time comparison of two strings."""
    if len(a) != len(b):
        return False
    diff = 0
    for x, y in zip(a.encode(), b.encode()):
        diff |= x ^ y
    return diff == 0


def mask_name(name):
    name = name.strip()
    if not name:
        return ""
    return name[0] + "*" * max(len(name) - 1, 1)


def mask_phone(phone):
    digits = [c for c in phone if c.isdigit()]
    if len(digits) <= 4:
        return "*" * len(digits)
    return "*" * (len(digits) - 4) + "".join(digits[-4:])


def to_minor(amount, currency):
    if not isinstance(amount, (int, float)) or isinstance(amount, bool):
        fail(transient(f"Shopee sent an amount that is not a number: {amount!r}"))
    scale = 1 if currency in NO_MINOR_UNITS else 100
    return int(round(amount * scale))


def send(method, url, body=b"", headers=()):
    req = http.Request(method=method, url=url, headers=list(headers), body=body, timeout_ms=None)
    try:
        return http.send(req)
    except Err as e:
        error = e.value
        if isinstance(error, http.HttpError_Throttled):
            fail(rate_limited(error.value))
        if isinstance(error, http.HttpError_Denied):
            fail(permanent(f"host refused the request: {error.value}"))
        if isinstance(error, http.HttpError_Timeout):
            fail(transient("timed out calling Shopee"))
        if isinstance(error, http.HttpError_Connection):
            fail(transient(f"connection failed: {error.value}"))
        if isinstance(error, http.HttpError_TooLarge):
            fail(transient(f"response exceeded the host's {error.value}-byte cap"))
        fail(invalid_input(f"request refused: {error.value}"))


class Shop:
    """One shop's settings and signed calls."""

    def __init__(self):
        self.base_url = setting("base_url").rstrip("/")
        self.partner_id = setting("partner_id")
        self.partner_key = setting("partner_key")
        self.shop_id = setting("shop_id")
        self.access_token = setting("access_token")
        self.page_size = int_setting("page_size", MAX_PAGE, 1, MAX_PAGE)
        self.throttle_wait_ms = int_setting("throttle_wait_ms", 1000, 1, 600_000)

    def url(self, api_path, params):
        ts = int(time.time())
        base = f"{self.partner_id}{api_path}{ts}{self.access_token}{self.shop_id}"
        common = [
            ("partner_id", self.partner_id),
            ("timestamp", ts),
            ("access_token", self.access_token),
            ("shop_id", self.shop_id),
            ("sign", hmac_hex(self.partner_key, base.encode())),
        ]
        query = "&".join(f"{k}={url_encode(v)}" for k, v in common + list(params))
        return f"{self.base_url}{api_path}?{query}"

    def call(self, api_path, params=(), body=None):
        url = self.url(api_path, params)
        if body is None:
            resp = send(http.Method.GET, url, headers=[("accept", "application/json")])
        else:
            resp = send(http.Method.POST, url, json.dumps(body).encode(), [("content-type", "application/json")])
        return self.answer(api_path, resp)

    def answer(self, api_path, resp):
        if resp.status == 429:
            fail(rate_limited(retry_after_ms(resp) or self.throttle_wait_ms))
        if resp.status >= 500:
            fail(transient(f"Shopee answered {resp.status} to {api_path}"))
        try:
            data = json.loads(resp.body)
        except ValueError:
            fail(transient(f"Shopee sent a body that is not JSON (HTTP {resp.status}) to {api_path}"))
        if not isinstance(data, dict):
            fail(transient(f"Shopee sent an unexpected body to {api_path}"))
        error = data.get("error") or ""
        message = data.get("message") or ""
        if error:
            if error == "error_too_many_request":
                fail(rate_limited(retry_after_ms(resp) or self.throttle_wait_ms))
            if error in EXPIRED_TOKEN_ERRORS:
                fail(auth(f"access token expired: Shopee answered {error}: {message}"))
            if error in AUTH_ERRORS:
                fail(auth(f"Shopee refused the credentials: {error}: {message}"))
            if error in ("error_server", "error_inner", "error_busi_server") or "internal" in message.lower():
                fail(transient(f"Shopee error {error}: {message}"))
            if error == "error_timestamp":
                fail(transient(f"Shopee refused the timestamp (clock skew?): {message}"))
            fail(permanent(f"Shopee error {error}: {message}"))
        if resp.status >= 400:
            fail(permanent(f"Shopee answered {resp.status} to {api_path}"))
        response = data.get("response")
        if not isinstance(response, dict):
            fail(transient(f"Shopee sent no `response` object for {api_path}"))
        return response


def retry_after_ms(resp):
    for name, value in resp.headers:
        if name.lower() == "retry-after":
            try:
                return max(1, int(float(value) * 1000))
            except ValueError:
                return None
    return None


def map_order(o):
    try:
        currency = o["currency"]
        status = o["order_status"]
        lines = [
            types.OrderLine(
                line_id=str(item.get("order_item_id", index)),
                sku=item.get("model_sku") or item.get("item_sku") or "",
                title=item.get("item_name", ""),
                quantity=int(item["model_quantity_purchased"]),
                unit_price_minor=to_minor(item["model_discounted_price"], currency),
            )
            for index, item in enumerate(o.get("item_list") or [])
        ]
        recipient = o.get("recipient_address") or {}
        return types.Order(
            order_id=o["order_sn"],
            status=STATUSES.get(status, types.OrderStatus.OTHER),
            platform_status=status,
            created_at_ms=int(o["create_time"]) * 1000,
            updated_at_ms=int(o["update_time"]) * 1000,
            currency=currency,
            total_minor=to_minor(o["total_amount"], currency),
            lines=lines,
            buyer_name_masked=mask_name(recipient.get("name") or o.get("buyer_username") or ""),
            buyer_phone_masked=mask_phone(recipient.get("phone") or ""),
            raw_json=json.dumps(o, separators=(",", ":")),
        )
    except (KeyError, TypeError, ValueError) as e:
        fail(transient(f"Shopee sent an order without a readable {e}"))


def model_key(sku):
    return f"model:{sku}"


def remembered_model(sku):
    value = kv_get(model_key(sku))
    if value is None:
        return None
    item, _, model = value.decode().partition(":")
    return int(item), int(model)


def kv_get(key):
    try:
        return kv.get(key)
    except Err as e:
        fail(transient(f"host state unavailable: {e.value}"))


def kv_set(key, value):
    try:
        kv.set(key, value)
    except Err as e:
        fail(transient(f"host state unavailable: {e.value}"))


def refresh_models(shop):
    """Read the catalogue and remember SKU -> (item id, model id)."""
    offset = 0
    while True:
        page = shop.call("/api/v2/product/get_item_list", [("offset", offset), ("page_size", 100), ("item_status", "NORMAL")])
        for item in page.get("item") or []:
            item_id = item["item_id"]
            models = shop.call("/api/v2/product/get_model_list", [("item_id", item_id)])
            for m in models.get("model") or []:
                if m.get("model_sku"):
                    kv_set(model_key(m["model_sku"]), f"{item_id}:{m['model_id']}".encode())
        if not page.get("has_next_page"):
            return
        offset = page.get("next_offset", offset + 100)


# Items per listing page: get_item_base_info takes at most 50.
LISTING_PAGE = 50


def listing_cursor(cursor):
    """The offset a listing cursor carries."""
    if cursor is None:
        return 0
    if not cursor.isdigit():
        fail(invalid_input(f"listing cursor {cursor!r} is not an offset"))
    return int(cursor)


def sellable(info):
    """What Shopee sells of an item or model: the summary's available stock, else the
    sum of the seller's stock across locations."""
    stock = info.get("stock_info_v2") or {}
    summary = stock.get("summary_info") or {}
    if isinstance(summary.get("total_available_stock"), int):
        return summary["total_available_stock"]
    return sum(s.get("stock", 0) for s in stock.get("seller_stock") or [] if isinstance(s.get("stock"), int))


def priced(info, what):
    """(minor units, currency) of an item's or model's current price."""
    prices = info.get("price_info") or []
    if not prices or not isinstance(prices[0], dict):
        fail(transient(f"Shopee sent no price for {what}"))
    currency = prices[0].get("currency") or ""
    return to_minor(prices[0].get("current_price"), currency), currency


def listings_of(shop, base):
    """One listing per model of each item (per item for one without models)."""
    out = []
    for info in base.get("item_list") or []:
        item_id = info.get("item_id")
        if not isinstance(item_id, int):
            fail(transient("Shopee sent an item without item_id"))
        name = info.get("item_name") or ""
        if not info.get("has_model"):
            price, currency = priced(info, f"item {item_id}")
            out.append(types.Listing(sku=info.get("item_sku") or "", item_id=str(item_id), variant_id=None, title=name,
                                     quantity=sellable(info), price_minor=price, currency=currency))
            continue
        models = shop.call("/api/v2/product/get_model_list", [("item_id", item_id)])
        for m in models.get("model") or []:
            price, currency = priced(m, f"model {m.get('model_id')}")
            model_name = m.get("model_name") or ""
            out.append(types.Listing(sku=m.get("model_sku") or "", item_id=str(item_id), variant_id=str(m.get("model_id")),
                                     title=f"{name} ({model_name})" if model_name else name,
                                     quantity=sellable(m), price_minor=price, currency=currency))
    return out


def signed_public_url(api_path):
    """The URL of a public (shop-less) Shopee call, signed with partner_id + api_path +
    timestamp, and the base URL it was built on."""
    base_url = setting("base_url").rstrip("/")
    partner_id = setting("partner_id")
    partner_key = setting("partner_key")
    ts = int(time.time())
    sign = hmac_hex(partner_key, f"{partner_id}{api_path}{ts}".encode())
    return f"{base_url}{api_path}?partner_id={url_encode(partner_id)}&timestamp={ts}&sign={sign}"


def token_call(api_path, body, what):
    """POST a token call (refresh or code exchange): the new credentials, or the refresh
    error berth acts on (``revoked``: the merchant must authorize again)."""
    url = signed_public_url(api_path)
    try:
        resp = send(http.Method.POST, url, json.dumps(body).encode(), [("content-type", "application/json")])
    except Err as e:
        fail(types.RefreshError_Transient(f"{what} not sent: {describe(e.value)}"))
    if resp.status == 429 or resp.status >= 500:
        fail(types.RefreshError_Transient(f"Shopee answered {resp.status} to the {what}"))
    try:
        data = json.loads(resp.body)
    except ValueError:
        fail(types.RefreshError_Transient(f"Shopee sent a {what} answer that is not JSON (HTTP {resp.status})"))
    if not isinstance(data, dict):
        fail(types.RefreshError_Transient(f"Shopee sent an unexpected {what} answer"))
    error = data.get("error") or ""
    if error:
        message = data.get("message") or ""
        if error in ("error_server", "error_inner", "error_busi_server", "error_too_many_request"):
            fail(types.RefreshError_Transient(f"Shopee error {error}: {message}"))
        fail(types.RefreshError_Revoked(f"Shopee refused the {what}: {error}: {message}"))
    access, refresh, expire_in = data.get("access_token"), data.get("refresh_token"), data.get("expire_in")
    if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh or not isinstance(expire_in, int):
        fail(types.RefreshError_Transient(f"Shopee's {what} answer lacks access_token, refresh_token or expire_in"))
    now_ms = int(time.time() * 1000)
    return access, refresh, now_ms + expire_in * 1000, now_ms + REFRESH_LIFETIME_MS


def refresh_grant(refresh_token):
    """POST auth/access_token/get with the refresh token."""
    body = {"refresh_token": refresh_token, "partner_id": int(setting("partner_id")), "shop_id": int(setting("shop_id"))}
    return token_call("/api/v2/auth/access_token/get", body, "refresh")


def consent_page(state, redirect_uri):
    """Shopee's authorization page (``shop/auth_partner``). Shopee sends the merchant back
    to ``redirect`` with ``code`` and ``shop_id`` added and the redirect's own query kept,
    so ``state`` rides in the redirect."""
    joiner = "&" if "?" in redirect_uri else "?"
    redirect = f"{redirect_uri}{joiner}state={url_encode(state)}"
    return f"{signed_public_url('/api/v2/shop/auth_partner')}&redirect={url_encode(redirect)}"


def code_grant(callback):
    """POST auth/token/get with the code Shopee sent back: the shop's first credentials
    and its ``shop_id``."""
    params = dict(callback)
    code, shop_id = params.get("code") or "", params.get("shop_id") or ""
    if not code:
        fail(types.RefreshError_Revoked("the consent page sent no code back: the merchant did not authorize the app"))
    if not shop_id.isdigit():
        fail(types.RefreshError_Revoked(
            "the consent page sent no shop_id back (a main account authorizes many shops: onboard each shop on its own)"
        ))
    body = {"code": code, "shop_id": int(shop_id), "partner_id": int(setting("partner_id"))}
    access, refresh, access_expires_ms, refresh_expires_ms = token_call("/api/v2/auth/token/get", body, "code exchange")
    now_ms = int(time.time() * 1000)
    credentials = types.Credentials(
        access_token=access,
        refresh_token=refresh,
        access_expires_ms=access_expires_ms,
        refresh_expires_ms=refresh_expires_ms,
        authorization_expires_ms=now_ms + AUTHORIZATION_LIFETIME_MS,
    )
    return types.Authorized(credentials=credentials, settings=[("shop_id", shop_id)])


def describe(error):
    value = getattr(error, "value", None)
    return f"{type(error).__name__}: {value}" if value is not None else type(error).__name__


class WitWorld(_WitWorld):
    def manifest(self):
        return types.Manifest(
            platform="shopee",
            connector_version=VERSION,
            wit_version=WIT_VERSION,
            capabilities=[types.Capability.ORDERS, types.Capability.INVENTORY, types.Capability.WEBHOOKS, types.Capability.PRODUCTS],
            allowed_hosts=["partner.shopeemobile.com", "openplatform.shopee.cn", "openplatform.shopee.com.br"],
            default_rate_limit=types.RateLimit(requests_per_minute=480, burst=5),
            max_window_ms=MAX_WINDOW_MS,
            required_config=["base_url", "partner_id", "partner_key", "shop_id", "access_token"],
        )

    def authorization(self):
        return types.AuthSupport(refreshes=True, oauth=True)

    def refresh_credentials(self, shop, current):
        if not current.refresh_token:
            fail(types.RefreshError_Revoked("no refresh token: authorize the app for the shop again"))
        access, refresh, access_expires_ms, refresh_expires_ms = refresh_grant(current.refresh_token)
        return types.Credentials(
            access_token=access,
            refresh_token=refresh,
            access_expires_ms=access_expires_ms,
            refresh_expires_ms=refresh_expires_ms,
            authorization_expires_ms=current.authorization_expires_ms,
        )

    def consent_url(self, shop, state, redirect_uri):
        return consent_page(state, redirect_uri)

    def exchange_code(self, shop, callback, redirect_uri):
        return code_grant(callback)

    def listings(self, shop, req):
        s = Shop()
        offset = listing_cursor(req.cursor)
        size = max(1, min(req.limit, LISTING_PAGE))
        page = s.call("/api/v2/product/get_item_list", [("offset", offset), ("page_size", size), ("item_status", "NORMAL")])
        ids = [i.get("item_id") for i in page.get("item") or []]
        out = []
        if ids:
            base = s.call("/api/v2/product/get_item_base_info", [("item_id_list", ",".join(str(i) for i in ids))])
            out = listings_of(s, base)
        next_cursor = None
        if page.get("has_next_page") and ids:
            next_cursor = str(page.get("next_offset") or offset + len(ids))
        return types.ListingPage(listings=out, next_cursor=next_cursor)

    def check(self, shop):
        s = Shop()
        now = int(time.time())
        s.call("/api/v2/order/get_order_list", [
            ("time_range_field", "update_time"), ("time_from", now - 3600), ("time_to", now), ("page_size", 1),
        ])
        return types.Health(ok=True, message="order list answered")

    def pull_orders(self, shop, req):
        s = Shop()
        start, end = req.window.start_ms, req.window.end_ms
        if end <= start:
            fail(invalid_input("empty time window"))
        if end - start > MAX_WINDOW_MS:
            fail(invalid_input("Shopee takes windows of at most 15 days"))
        # The window is [start, end) in ms; Shopee's bounds are inclusive seconds.
        time_from = -(-start // 1000)
        time_to = -(-end // 1000) - 1
        if time_to < time_from:
            return types.OrderPage(orders=[], next_page_cursor=None)
        params = [
            ("time_range_field", "update_time"),
            ("time_from", time_from),
            ("time_to", time_to),
            ("page_size", s.page_size),
            ("response_optional_fields", "order_status"),
        ]
        if req.page_cursor:
            params.append(("cursor", req.page_cursor))
        page = s.call("/api/v2/order/get_order_list", params)
        numbers = [o["order_sn"] for o in page.get("order_list") or [] if isinstance(o, dict) and "order_sn" in o]
        orders = []
        if numbers:
            detail = s.call("/api/v2/order/get_order_detail", [
                ("order_sn_list", ",".join(numbers)),
                ("response_optional_fields", "buyer_username,recipient_address,item_list,total_amount,currency"),
            ])
            by_sn = {o.get("order_sn"): o for o in detail.get("order_list") or [] if isinstance(o, dict)}
            missing = [n for n in numbers if n not in by_sn]
            if missing:
                fail(transient(f"Shopee listed orders it then had no detail for: {', '.join(missing[:5])}"))
            orders = [map_order(by_sn[n]) for n in numbers]
        more = page.get("more") is True
        cursor = page.get("next_cursor") or None
        if more and not cursor:
            fail(transient("Shopee said there is more but sent no next_cursor"))
        metrics.counter_add("orders_pulled", [], len(orders))
        return types.OrderPage(orders=orders, next_page_cursor=cursor if more else None)

    def push_inventory(self, shop, updates):
        s = Shop()
        done = []
        refreshed = False
        targets = {}
        for u in updates:
            found = remembered_model(u.sku)
            if found is None and not refreshed:
                try:
                    refresh_models(s)
                except Err as e:
                    return stop_batch(done, e)
                refreshed = True
                found = remembered_model(u.sku)
            if found is None:
                done.append(types.UpdateResult(sku=u.sku, accepted=False, message="Shopee has no model with this SKU"))
                continue
            targets.setdefault(found[0], []).append((found[1], u))
        for item_id, models in targets.items():
            body = {
                "item_id": item_id,
                "stock_list": [{"model_id": m, "seller_stock": [{"stock": u.quantity}]} for m, u in models],
            }
            try:
                answer = s.call("/api/v2/product/update_stock", body=body)
            except Err as e:
                if isinstance(e.value, (types.ConnectorError_Permanent, types.ConnectorError_InvalidInput)):
                    done.extend(types.UpdateResult(sku=u.sku, accepted=False, message=e.value.value) for _, u in models)
                    continue
                return stop_batch(done, e)
            ok = {r.get("model_id") for r in answer.get("success_list") or []}
            failed = {r.get("model_id"): r.get("failed_reason", "refused") for r in answer.get("failure_list") or []}
            for m, u in models:
                if m in ok:
                    done.append(types.UpdateResult(sku=u.sku, accepted=True, message=None))
                elif m in failed:
                    done.append(types.UpdateResult(sku=u.sku, accepted=False, message=str(failed[m])))
                # A model in neither list stays due: the host pushes it again.
        metrics.counter_add("stock_pushed", [], sum(1 for r in done if r.accepted))
        return done

    def handle_webhook(self, shop, req):
        partner_key = setting("partner_key")
        callback = config.get("webhook_url")
        if callback is None:
            fail(permanent("no `webhook_url` (the push callback URL registered with Shopee) is configured for this shop"))
        signature = next((v for k, v in req.headers if k.lower() == "authorization"), None)
        if signature is None:
            fail(auth("the push has no Authorization header"))
        expected = hmac_hex(partner_key, callback.encode() + b"|" + bytes(req.body))
        if not same(expected, signature.strip().lower()):
            fail(auth("the push's Authorization does not match its body"))
        try:
            push = json.loads(req.body)
        except ValueError:
            fail(invalid_input("push body is not JSON"))
        if not isinstance(push, dict):
            fail(invalid_input("push body is not a JSON object"))
        if push.get("code") != 3:
            return []
        data = push.get("data") or {}
        number = data.get("ordersn") or data.get("order_sn")
        if not isinstance(number, str) or not number:
            fail(invalid_input("order-status push without an order number"))
        return [types.Event_OrderChanged(number)]


def stop_batch(done, error):
    """End a batch at a platform-level error: what was done so far, or the error."""
    if done:
        return done
    raise error
