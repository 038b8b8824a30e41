/* berth connector for WooCommerce's REST API (wc/v3), written in C.
 *
 * The same platform as plugins/woo-js, in C: built with Debian's clang and wasi-libc,
 * bindings from `wit-bindgen c`, made a component with `wasm-tools component new` and
 * the WASI preview1 adapter (see build.sh and sdk/docs/c.md).
 *
 * Orders: `GET orders?modified_after&modified_before&dates_are_gmt=true&orderby=modified
 * &order=asc`, paged by key: the cursor is the last "<modified second>:<id>" returned
 * (plus a page number when one second holds more than a page), so an order modified
 * mid-walk cannot shift the pages under it. 429 + Retry-After (seconds) -> rate-limited;
 * 5xx (a PHP fatal error is an HTML page) -> transient; 401/403 -> auth.
 *
 * Stock: `GET products?sku=a,b` for the product ids, then `POST products/batch` with
 * `update: [{id, stock_quantity}]`, one result per SKU.
 *
 * Webhooks: `X-WC-Webhook-Signature` = base64 HMAC-SHA256(webhook secret, raw body),
 * compared in constant time; `order.*` topics -> order-upserted.
 *
 * Listings (0.4.0): `GET products?per_page&page` (the cursor is the page number, up to
 * `X-WP-TotalPages`); a simple product is one listing, a variable one a listing per
 * variation (`products/{id}/variations`), priced in the store's currency
 * (`data/currencies/current`, or the shop setting `currency`).
 *
 * Credentials are static consumer keys: `authorization` says so and the refresh and OAuth
 * calls (0.3.0) answer that they are not offered.
 *
 * Shop config: `base_url`, secrets `consumer_key`, `consumer_secret`, `webhook_secret`;
 * optional `page_size` (1..100).
 */
#include "berth_guest.h"
#include "berth_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VERSION "0.1.0"
#define MAX_PAGE 100
#define MAX_BATCH 100

typedef struct {
    char *base;
    char *auth_header;
    int page_size;
} shop_settings;

static bool load_settings(shop_settings *s, berth_error *err) {
    char *key, *secret;
    if (!berth_required_config("base_url", &s->base, err)) return false;
    if (!berth_required_config("consumer_key", &key, err)) return false;
    if (!berth_required_config("consumer_secret", &secret, err)) return false;
    size_t n = strlen(s->base);
    while (n && s->base[n - 1] == '/') s->base[--n] = '\0';
    berth_buf creds = {0};
    berth_buf_printf(&creds, "%s:%s", key, secret);
    berth_buf auth = {0};
    berth_buf_printf(&auth, "Basic %s", berth_base64((const uint8_t *)creds.ptr, creds.len));
    s->auth_header = auth.ptr;
    s->page_size = MAX_PAGE;
    char *size = berth_config("page_size");
    if (size) {
        char *end;
        long v = strtol(size, &end, 10);
        if (*end || v < 1 || v > MAX_PAGE) return berth_permanent(err, "page_size `%s` must be a whole number from 1 to %d", size, MAX_PAGE);
        s->page_size = (int)v;
    }
    return true;
}

/* Call the site; on success *out is the parsed JSON body. */
static bool call(const shop_settings *s, berth_connector_http_method_t method, const char *url, const char *body,
                 json_node **out, berth_connector_http_response_t *resp, berth_error *err) {
    const char *headers[] = { "authorization", s->auth_header, "accept", "application/json",
                              body ? "content-type" : NULL, "application/json", NULL };
    if (!berth_send(method, url, headers, (const uint8_t *)body, body ? strlen(body) : 0, resp, err)) return false;
    if (resp->status == 429) {
        char *retry = berth_header(resp, "retry-after");
        long secs = retry ? strtol(retry, NULL, 10) : 0;
        return berth_rate_limited(err, secs > 0 ? (uint64_t)secs * 1000 : 1000);
    }
    if (resp->status >= 500) return berth_transient(err, "the shop answered %u (a PHP or gateway error)", resp->status);
    const char *why = NULL;
    json_node *data = json_parse(resp->body.ptr, resp->body.len, &why);
    if (resp->status == 401 || resp->status == 403)
        return berth_auth(err, "the shop refused the consumer key (HTTP %u): %s", resp->status, data ? json_str(json_get(data, "code")) : "no JSON body");
    if (resp->status >= 400)
        return berth_permanent(err, "the shop answered %u: %s", resp->status, data ? json_str(json_get(data, "message")) : "no JSON body");
    if (!data) return berth_transient(err, "the shop answered %u with a body that is not JSON (%s)", resp->status, why);
    *out = data;
    return true;
}

static berth_connector_types_order_status_t status_of(const char *s) {
    if (!s) return BERTH_CONNECTOR_TYPES_ORDER_STATUS_OTHER;
    if (!strcmp(s, "pending")) return BERTH_CONNECTOR_TYPES_ORDER_STATUS_UNPAID;
    if (!strcmp(s, "processing")) return BERTH_CONNECTOR_TYPES_ORDER_STATUS_PAID;
    if (!strcmp(s, "completed")) return BERTH_CONNECTOR_TYPES_ORDER_STATUS_COMPLETED;
    if (!strcmp(s, "cancelled")) return BERTH_CONNECTOR_TYPES_ORDER_STATUS_CANCELLED;
    if (!strcmp(s, "refunded")) return BERTH_CONNECTOR_TYPES_ORDER_STATUS_REFUNDED;
    return BERTH_CONNECTOR_TYPES_ORDER_STATUS_OTHER;
}

/* Append a JSON string literal of `s` to `b`. */
static void json_quote(berth_buf *b, const char *s) {
    berth_buf_add(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') { berth_buf_add(b, "\\", 1); berth_buf_add(b, (const char *)p, 1); }
        else if (*p < 0x20) berth_buf_printf(b, "\\u%04x", *p);
        else berth_buf_add(b, (const char *)p, 1);
    }
    berth_buf_add(b, "\"", 1);
}

/* The order's fields, re-serialized compactly as raw-json (numbers as written). */
static void write_json(berth_buf *b, const json_node *n) {
    switch (n->type) {
        case JSON_NULL: berth_buf_puts(b, "null"); break;
        case JSON_BOOL: berth_buf_puts(b, n->boolean ? "true" : "false"); break;
        case JSON_NUMBER: berth_buf_puts(b, n->text); break;
        case JSON_STRING: json_quote(b, n->text); break;
        case JSON_ARRAY:
        case JSON_OBJECT: {
            berth_buf_add(b, n->type == JSON_ARRAY ? "[" : "{", 1);
            for (json_node *c = n->first_child; c; c = c->next) {
                if (c != n->first_child) berth_buf_add(b, ",", 1);
                if (n->type == JSON_OBJECT) { json_quote(b, c->key); berth_buf_add(b, ":", 1); }
                write_json(b, c);
            }
            berth_buf_add(b, n->type == JSON_ARRAY ? "]" : "}", 1);
        }
    }
}

static bool map_order(const json_node *o, berth_connector_types_order_t *out, berth_error *err) {
    int64_t id, created, updated, total;
    if (!json_i64(json_get(o, "id"), &id)) return berth_transient(err, "the shop sent an order without an id");
    if (!berth_parse_iso_utc(json_str(json_get(o, "date_created_gmt")), &created) ||
        !berth_parse_iso_utc(json_str(json_get(o, "date_modified_gmt")), &updated))
        return berth_transient(err, "order %lld has unreadable dates", (long long)id);
    const char *total_text = json_str(json_get(o, "total"));
    if (!total_text || !berth_parse_minor(total_text, &total))
        return berth_transient(err, "order %lld has an unreadable total", (long long)id);
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", (long long)id);
    berth_set_str(&out->order_id, buf);
    const char *status = json_str(json_get(o, "status"));
    out->status = status_of(status);
    berth_set_str(&out->platform_status, status ? status : "");
    out->created_at_ms = created;
    out->updated_at_ms = updated;
    const char *currency = json_str(json_get(o, "currency"));
    berth_set_str(&out->currency, currency ? currency : "");
    out->total_minor = total;
    json_node *items = json_get(o, "line_items");
    size_t count = json_is(items, JSON_ARRAY) ? items->child_count : 0;
    out->lines.ptr = count ? calloc(count, sizeof(berth_connector_types_order_line_t)) : NULL;
    out->lines.len = count;
    size_t i = 0;
    for (json_node *l = count ? items->first_child : NULL; l; l = l->next, i++) {
        berth_connector_types_order_line_t *line = &out->lines.ptr[i];
        int64_t line_id, quantity, line_total;
        const char *lt = json_str(json_get(l, "total"));
        if (!json_i64(json_get(l, "id"), &line_id) || !json_i64(json_get(l, "quantity"), &quantity) || quantity <= 0 ||
            !lt || !berth_parse_minor(lt, &line_total))
            return berth_transient(err, "order %lld has an unreadable line", (long long)id);
        snprintf(buf, sizeof buf, "%lld", (long long)line_id);
        berth_set_str(&line->line_id, buf);
        const char *sku = json_str(json_get(l, "sku"));
        const char *name = json_str(json_get(l, "name"));
        berth_set_str(&line->sku, sku ? sku : "");
        berth_set_str(&line->title, name ? name : "");
        line->quantity = (uint32_t)quantity;
        line->unit_price_minor = line_total / quantity;
    }
    json_node *billing = json_get(o, "billing");
    const char *first = json_str(json_get(billing, "first_name"));
    const char *last = json_str(json_get(billing, "last_name"));
    const char *phone = json_str(json_get(billing, "phone"));
    berth_buf name = {0};
    berth_buf_printf(&name, "%s %s", first ? first : "", last ? last : "");
    berth_mask_name(name.ptr, &out->buyer_name_masked);
    berth_mask_phone(phone ? phone : "", &out->buyer_phone_masked);
    berth_buf raw = {0};
    write_json(&raw, o);
    berth_set_str(&out->raw_json, raw.ptr);
    return true;
}

static void set_list(connector_list_string_t *list, const char *const *items, size_t n) {
    list->ptr = n ? calloc(n, sizeof(connector_string_t)) : NULL;
    list->len = n;
    for (size_t i = 0; i < n; i++) berth_set_str(&list->ptr[i], items[i]);
}

void exports_connector_manifest(connector_manifest_t *ret) {
    berth_set_str(&ret->platform, "woocommerce");
    berth_set_str(&ret->connector_version, VERSION);
#ifdef BERTH_WIT_0_2
    /* The build for the older world (build.sh with BERTH_WIT=0.2.0): no listings. */
    berth_set_str(&ret->wit_version, "0.2.0");
    ret->capabilities.len = 3;
#else
    berth_set_str(&ret->wit_version, "0.4.0");
    ret->capabilities.len = 4;
#endif
    ret->capabilities.ptr = calloc(4, sizeof(berth_connector_types_capability_t));
    ret->capabilities.ptr[0] = BERTH_CONNECTOR_TYPES_CAPABILITY_ORDERS;
    ret->capabilities.ptr[1] = BERTH_CONNECTOR_TYPES_CAPABILITY_INVENTORY;
    ret->capabilities.ptr[2] = BERTH_CONNECTOR_TYPES_CAPABILITY_WEBHOOKS;
    ret->capabilities.ptr[3] = BERTH_CONNECTOR_TYPES_CAPABILITY_PRODUCTS;
    /* Every site is its own host: ops grant it with extra_hosts. */
    set_list(&ret->allowed_hosts, NULL, 0);
    ret->default_rate_limit.requests_per_minute = 300;
    ret->default_rate_limit.burst = 5;
    ret->max_window_ms.is_some = false;
    const char *required[] = { "base_url", "consumer_key", "consumer_secret" };
    set_list(&ret->required_config, required, 3);
}

bool exports_connector_check(connector_string_t *shop, connector_health_t *ret, connector_connector_error_t *err) {
    (void)shop;
    shop_settings s;
    if (!load_settings(&s, err)) return false;
    berth_buf url = {0};
    berth_buf_printf(&url, "%s/wp-json/wc/v3/orders?per_page=1&_fields=id", s.base);
    json_node *data;
    berth_connector_http_response_t resp;
    if (!call(&s, BERTH_CONNECTOR_HTTP_METHOD_GET, url.ptr, NULL, &data, &resp, err)) return false;
    ret->ok = true;
    berth_set_str(&ret->message, "orders endpoint answered");
    return true;
}

typedef struct {
    long long sec;
    long long id;
    long page;
} cursor;

bool exports_connector_pull_orders(connector_string_t *shop, connector_pull_request_t *req, connector_order_page_t *ret,
                                   connector_connector_error_t *err) {
    (void)shop;
    int64_t start = req->window.start_ms, end = req->window.end_ms;
    if (end <= start) return berth_invalid_input(err, "empty time window");
    shop_settings s;
    if (!load_settings(&s, err)) return false;
    /* [start, end) in ms; WooCommerce's bounds are strict, in seconds. */
    long long first_sec = (start + 999) / 1000, before_sec = (end + 999) / 1000;
    cursor after = { first_sec, -1, 1 };
    if (req->page_cursor.is_some) {
        char *text = berth_cstr(&req->page_cursor.val);
        char tail;
        if (sscanf(text, "%lld:%lld:%ld%c", &after.sec, &after.id, &after.page, &tail) != 3 || after.page < 1)
            return berth_invalid_input(err, "page cursor `%s` is not one of mine", text);
    }
    char from[20], to[20];
    berth_format_iso_utc(after.sec - 1, from);
    berth_format_iso_utc(before_sec, to);
    berth_buf url = {0};
    berth_buf_printf(&url, "%s/wp-json/wc/v3/orders?status=any&dates_are_gmt=true&orderby=modified&order=asc&per_page=%d&page=%ld"
                     "&modified_after=%s&modified_before=%s", s.base, s.page_size, after.page, from, to);
    json_node *data;
    berth_connector_http_response_t resp;
    if (!call(&s, BERTH_CONNECTOR_HTTP_METHOD_GET, url.ptr, NULL, &data, &resp, err)) return false;
    if (!json_is(data, JSON_ARRAY)) return berth_transient(err, "the shop sent an order list that is not a list");
    ret->orders.ptr = data->child_count ? calloc(data->child_count, sizeof(berth_connector_types_order_t)) : NULL;
    ret->orders.len = 0;
    long long last_sec = after.sec, last_id = after.id;
    for (json_node *o = data->first_child; o; o = o->next) {
        int64_t modified, id;
        if (!berth_parse_iso_utc(json_str(json_get(o, "date_modified_gmt")), &modified) || !json_i64(json_get(o, "id"), &id))
            return berth_transient(err, "the shop sent an order without an id or modification date");
        long long sec = modified / 1000;
        last_sec = sec;
        last_id = id;
        if (sec < after.sec || (sec == after.sec && id <= after.id)) continue;
        if (!map_order(o, &ret->orders.ptr[ret->orders.len], err)) return false;
        ret->orders.len++;
    }
    char *pages_text = berth_header(&resp, "x-wp-totalpages");
    long total_pages = pages_text ? strtol(pages_text, NULL, 10) : -1;
    bool more = total_pages >= 0 ? after.page < total_pages : data->child_count == (size_t)s.page_size;
    ret->next_page_cursor.is_some = more;
    if (more) {
        char next[80];
        bool same_second = last_sec == after.sec;
        if (same_second && (ret->orders.len < data->child_count || after.page > 1))
            snprintf(next, sizeof next, "%lld:%lld:%ld", after.sec, after.id, after.page + 1);
        else
            snprintf(next, sizeof next, "%lld:%lld:1", last_sec, last_id);
        berth_set_str(&ret->next_page_cursor.val, next);
    }
    berth_counter_add("orders_pulled", ret->orders.len);
    return true;
}

static void result(connector_list_update_result_t *ret, const char *sku, bool accepted, const char *message) {
    connector_update_result_t *r = &ret->ptr[ret->len++];
    berth_set_str(&r->sku, sku);
    r->accepted = accepted;
    r->message.is_some = message != NULL;
    if (message) berth_set_str(&r->message.val, message);
}

static bool is_per_sku(const berth_error *e) {
    return e->tag == BERTH_CONNECTOR_TYPES_CONNECTOR_ERROR_PERMANENT || e->tag == BERTH_CONNECTOR_TYPES_CONNECTOR_ERROR_INVALID_INPUT;
}

/* Push one chunk of at most MAX_BATCH SKUs; results are appended to ret. */
static bool push_chunk(const shop_settings *s, const connector_stock_update_t *updates, size_t n,
                       connector_list_update_result_t *ret, berth_error *err) {
    char **skus = calloc(n, sizeof(char *));
    berth_buf list = {0};
    berth_buf_add(&list, "", 0);
    for (size_t i = 0; i < n; i++) {
        skus[i] = berth_cstr(&updates[i].sku);
        if (strchr(skus[i], ',')) continue;
        if (list.len) berth_buf_add(&list, ",", 1);
        berth_buf_puts(&list, skus[i]);
    }
    berth_buf url = {0};
    berth_buf_printf(&url, "%s/wp-json/wc/v3/products?per_page=%d&sku=%s", s->base, MAX_PAGE, berth_url_encode(list.ptr));
    json_node *products;
    berth_connector_http_response_t resp;
    if (!call(s, BERTH_CONNECTOR_HTTP_METHOD_GET, url.ptr, NULL, &products, &resp, err)) return false;
    if (!json_is(products, JSON_ARRAY)) return berth_transient(err, "the shop sent a product list that is not a list");
    int64_t *ids = calloc(n, sizeof(int64_t));
    size_t known = 0;
    berth_buf body = {0};
    berth_buf_puts(&body, "{\"update\":[");
    for (size_t i = 0; i < n; i++) {
        ids[i] = -1;
        for (json_node *p = products->first_child; p; p = p->next) {
            const char *sku = json_str(json_get(p, "sku"));
            int64_t id;
            if (sku && !strcmp(sku, skus[i]) && json_i64(json_get(p, "id"), &id)) { ids[i] = id; break; }
        }
        if (ids[i] < 0) continue;
        berth_buf_printf(&body, "%s{\"id\":%lld,\"manage_stock\":true,\"stock_quantity\":%u}", known ? "," : "",
                         (long long)ids[i], updates[i].quantity);
        known++;
    }
    berth_buf_puts(&body, "]}");
    json_node *answer = NULL;
    berth_buf batch_url = {0};
    berth_buf_printf(&batch_url, "%s/wp-json/wc/v3/products/batch", s->base);
    if (known && !call(s, BERTH_CONNECTOR_HTTP_METHOD_POST, batch_url.ptr, body.ptr, &answer, &resp, err)) return false;
    json_node *results = json_get(answer, "update");
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0) { result(ret, skus[i], false, "the shop has no product with this SKU"); continue; }
        json_node *r = json_at(results, k++);
        if (!r) continue; /* no answer for it: it stays due */
        json_node *e = json_get(r, "error");
        if (e) {
            berth_buf why = {0};
            berth_buf_printf(&why, "%s: %s", json_str(json_get(e, "code")) ? json_str(json_get(e, "code")) : "error",
                             json_str(json_get(e, "message")) ? json_str(json_get(e, "message")) : "refused");
            result(ret, skus[i], false, why.ptr);
        } else {
            result(ret, skus[i], true, NULL);
        }
    }
    return true;
}

bool exports_connector_push_inventory(connector_string_t *shop, connector_list_stock_update_t *updates,
                                      connector_list_update_result_t *ret, connector_connector_error_t *err) {
    (void)shop;
    shop_settings s;
    if (!load_settings(&s, err)) return false;
    ret->ptr = updates->len ? calloc(updates->len, sizeof(connector_update_result_t)) : NULL;
    ret->len = 0;
    for (size_t i = 0; i < updates->len; i += MAX_BATCH) {
        size_t n = updates->len - i < MAX_BATCH ? updates->len - i : MAX_BATCH;
        berth_error e;
        if (push_chunk(&s, updates->ptr + i, n, ret, &e)) continue;
        if (is_per_sku(&e)) {
            char *why = berth_cstr(&e.val.permanent);
            for (size_t j = 0; j < n; j++) result(ret, berth_cstr(&updates->ptr[i + j].sku), false, why);
            continue;
        }
        /* Throttled, auth, outage: stop; what is done is reported, the rest stays due. */
        if (ret->len == 0) { *err = e; return false; }
        break;
    }
    uint64_t accepted = 0;
    for (size_t i = 0; i < ret->len; i++) accepted += ret->ptr[i].accepted;
    berth_counter_add("stock_pushed", accepted);
    return true;
}

bool exports_connector_handle_webhook(connector_string_t *shop, connector_webhook_request_t *req, connector_list_event_t *ret,
                                      connector_connector_error_t *err) {
    (void)shop;
    char *secret = berth_config("webhook_secret");
    if (!secret) return berth_permanent(err, "no `webhook_secret` (the secret set on the WooCommerce webhook) is configured for this shop");
    char *signature = berth_webhook_header(req, "x-wc-webhook-signature");
    if (!signature) return berth_auth(err, "the request has no X-WC-Webhook-Signature header");
    char *trimmed = signature;
    while (*trimmed == ' ') trimmed++;
    size_t len = strlen(trimmed);
    while (len && trimmed[len - 1] == ' ') trimmed[--len] = '\0';
    char *expected = berth_hmac_sha256_base64(secret, req->body.ptr, req->body.len);
    if (!berth_same(expected, trimmed)) return berth_auth(err, "X-WC-Webhook-Signature does not match the body");
    char *topic = berth_webhook_header(req, "x-wc-webhook-topic");
    ret->ptr = NULL;
    ret->len = 0;
    if (!topic || strncmp(topic, "order.", 6) != 0) return true;
    const char *why = NULL;
    json_node *order = json_parse(req->body.ptr, req->body.len, &why);
    if (!order) return berth_invalid_input(err, "webhook body is not JSON: %s", why);
    ret->ptr = calloc(1, sizeof(connector_event_t));
    ret->len = 1;
    if (!strcmp(topic, "order.deleted")) {
        int64_t id;
        if (!json_i64(json_get(order, "id"), &id)) return berth_invalid_input(err, "order.deleted without an id");
        char buf[32];
        snprintf(buf, sizeof buf, "%lld", (long long)id);
        ret->ptr[0].tag = BERTH_CONNECTOR_TYPES_EVENT_ORDER_CHANGED;
        berth_set_str(&ret->ptr[0].val.order_changed, buf);
        return true;
    }
    ret->ptr[0].tag = BERTH_CONNECTOR_TYPES_EVENT_ORDER_UPSERTED;
    berth_error e;
    if (!map_order(order, &ret->ptr[0].val.order_upserted, &e)) {
        return berth_invalid_input(err, "webhook body is not a WooCommerce order: %s", berth_cstr(&e.val.transient));
    }
    return true;
}

#ifndef BERTH_WIT_0_2
/* Static consumer keys: no refresh, no OAuth onboarding (0.3.0's calls). */
void exports_connector_authorization(connector_auth_support_t *ret) {
    ret->refreshes = false;
    ret->oauth = false;
}

static bool refresh_refused(connector_refresh_error_t *err, const char *why) {
    err->tag = BERTH_CONNECTOR_TYPES_REFRESH_ERROR_REVOKED;
    berth_set_str(&err->val.revoked, why);
    return false;
}

bool exports_connector_refresh_credentials(connector_string_t *shop, connector_credentials_t *current, connector_credentials_t *ret,
                                           connector_refresh_error_t *err) {
    (void)shop, (void)current, (void)ret;
    return refresh_refused(err, "WooCommerce consumer keys do not expire: put new ones in the shop config");
}

bool exports_connector_consent_url(connector_string_t *shop, connector_string_t *state, connector_string_t *redirect_uri,
                                   connector_string_t *ret, connector_connector_error_t *err) {
    (void)shop, (void)state, (void)redirect_uri, (void)ret;
    return berth_permanent(err, "this connector does not onboard shops by OAuth: create a consumer key in WooCommerce");
}

bool exports_connector_exchange_code(connector_string_t *shop, connector_list_tuple2_string_string_t *callback,
                                     connector_string_t *redirect_uri, connector_authorized_t *ret, connector_refresh_error_t *err) {
    (void)shop, (void)callback, (void)redirect_uri, (void)ret;
    return refresh_refused(err, "this connector does not onboard shops by OAuth");
}

/* The store's currency: the shop setting `currency`, else data/currencies/current. */
static bool store_currency(const shop_settings *s, char **out, berth_error *err) {
    char *configured = berth_config("currency");
    if (configured && *configured) { *out = configured; return true; }
    berth_buf url = {0};
    berth_buf_printf(&url, "%s/wp-json/wc/v3/data/currencies/current", s->base);
    json_node *data;
    berth_connector_http_response_t resp;
    if (!call(s, BERTH_CONNECTOR_HTTP_METHOD_GET, url.ptr, NULL, &data, &resp, err)) return false;
    const char *code = json_str(json_get(data, "code"));
    if (!code || !*code) return berth_transient(err, "the shop sent no currency code");
    *out = (char *)code;
    return true;
}

typedef struct {
    berth_connector_types_listing_t *ptr;
    size_t len, cap;
} listing_vec;

/* One listing of a product, or of one of its variations (`variation` non-NULL). */
static bool add_listing(listing_vec *v, const json_node *product, const json_node *variation, const char *currency, berth_error *err) {
    const json_node *from = variation ? variation : product;
    int64_t item_id, variant_id = 0, quantity = 0, price = 0;
    if (!json_i64(json_get(product, "id"), &item_id) || (variation && !json_i64(json_get(variation, "id"), &variant_id)))
        return berth_transient(err, "the shop sent a product or variation without an id");
    const char *price_text = json_str(json_get(from, "price"));
    if (price_text && *price_text && !berth_parse_minor(price_text, &price))
        return berth_transient(err, "product %lld has an unreadable price", (long long)item_id);
    json_i64(json_get(from, "stock_quantity"), &quantity);
    if (v->len == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 32;
        v->ptr = realloc(v->ptr, v->cap * sizeof(*v->ptr));
    }
    berth_connector_types_listing_t *l = &v->ptr[v->len++];
    memset(l, 0, sizeof(*l));
    const char *sku = json_str(json_get(from, "sku"));
    berth_set_str(&l->sku, sku ? sku : "");
    berth_buf id = {0};
    berth_buf_printf(&id, "%lld", (long long)item_id);
    berth_set_str(&l->item_id, id.ptr);
    l->variant_id.is_some = variation != NULL;
    if (variation) {
        berth_buf vid = {0};
        berth_buf_printf(&vid, "%lld", (long long)variant_id);
        berth_set_str(&l->variant_id.val, vid.ptr);
    }
    const char *name = json_str(json_get(product, "name"));
    berth_buf title = {0};
    berth_buf_puts(&title, name ? name : "");
    if (variation) {
        const char *sep = " (";
        for (json_node *a = json_get(variation, "attributes") ? json_get(variation, "attributes")->first_child : NULL; a; a = a->next) {
            const char *option = json_str(json_get(a, "option"));
            if (!option || !*option) continue;
            berth_buf_printf(&title, "%s%s", sep, option);
            sep = ", ";
        }
        if (strcmp(sep, ", ") == 0) berth_buf_puts(&title, ")");
    }
    berth_set_str(&l->title, title.ptr);
    l->quantity = quantity;
    l->price_minor = price;
    berth_set_str(&l->currency, currency);
    return true;
}

bool exports_connector_listings(connector_string_t *shop, connector_listing_request_t *req, connector_listing_page_t *ret,
                                connector_connector_error_t *err) {
    (void)shop;
    shop_settings s;
    if (!load_settings(&s, err)) return false;
    long page = 1;
    if (req->cursor.is_some) {
        char *text = berth_cstr(&req->cursor.val), *end;
        page = strtol(text, &end, 10);
        if (*end || page < 1) return berth_invalid_input(err, "listing cursor `%s` is not a page number", text);
    }
    unsigned size = req->limit < 1 ? 1 : req->limit > MAX_PAGE ? MAX_PAGE : req->limit;
    char *currency;
    if (!store_currency(&s, &currency, err)) return false;
    berth_buf url = {0};
    berth_buf_printf(&url, "%s/wp-json/wc/v3/products?per_page=%u&page=%ld&orderby=id&order=asc", s.base, size, page);
    json_node *products;
    berth_connector_http_response_t resp;
    if (!call(&s, BERTH_CONNECTOR_HTTP_METHOD_GET, url.ptr, NULL, &products, &resp, err)) return false;
    if (!json_is(products, JSON_ARRAY)) return berth_transient(err, "the shop sent a product list that is not a list");
    listing_vec v = {0};
    size_t count = 0;
    for (json_node *p = products->first_child; p; p = p->next, count++) {
        const char *type = json_str(json_get(p, "type"));
        if (!type || strcmp(type, "variable") != 0) {
            if (!add_listing(&v, p, NULL, currency, err)) return false;
            continue;
        }
        int64_t id = 0;
        json_i64(json_get(p, "id"), &id);
        berth_buf vurl = {0};
        berth_buf_printf(&vurl, "%s/wp-json/wc/v3/products/%lld/variations?per_page=%d", s.base, (long long)id, MAX_PAGE);
        json_node *variations;
        berth_connector_http_response_t vresp;
        if (!call(&s, BERTH_CONNECTOR_HTTP_METHOD_GET, vurl.ptr, NULL, &variations, &vresp, err)) return false;
        if (!json_is(variations, JSON_ARRAY)) return berth_transient(err, "the shop sent variations of product %lld that are not a list", (long long)id);
        for (json_node *x = variations->first_child; x; x = x->next)
            if (!add_listing(&v, p, x, currency, err)) return false;
    }
    ret->listings.ptr = v.ptr;
    ret->listings.len = v.len;
    char *pages = berth_header(&resp, "x-wp-totalpages");
    char *end = NULL;
    long total = pages ? strtol(pages, &end, 10) : -1;
    bool more = pages && end && *end == '\0' ? page < total : count == size;
    ret->next_cursor.is_some = more;
    if (more) {
        berth_buf next = {0};
        berth_buf_printf(&next, "%ld", page + 1);
        berth_set_str(&ret->next_cursor.val, next.ptr);
    }
    return true;
}
#endif /* BERTH_WIT_0_2 */
