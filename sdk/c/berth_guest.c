#include "berth_guest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *vformat(const char *fmt, va_list ap) {
    va_list copy;
    va_copy(copy, ap);
    int n = vsnprintf(NULL, 0, fmt, copy);
    va_end(copy);
    if (n < 0) n = 0;
    char *out = malloc((size_t)n + 1);
    if (!out) abort();
    vsnprintf(out, (size_t)n + 1, fmt, ap);
    return out;
}

static bool set_error(berth_error *err, uint8_t tag, const char *fmt, va_list ap) {
    char *msg = vformat(fmt, ap);
    err->tag = tag;
    /* Every string case shares the union's layout. */
    err->val.transient.ptr = (uint8_t *)msg;
    err->val.transient.len = strlen(msg);
    return false;
}

bool berth_rate_limited(berth_error *err, uint64_t ms) {
    err->tag = BERTH_CONNECTOR_TYPES_CONNECTOR_ERROR_RATE_LIMITED;
    err->val.rate_limited = ms ? ms : 1;
    return false;
}

#define ERROR_FN(name, TAG)                                   \
    bool name(berth_error *err, const char *fmt, ...) {       \
        va_list ap;                                           \
        va_start(ap, fmt);                                    \
        set_error(err, BERTH_CONNECTOR_TYPES_CONNECTOR_ERROR_##TAG, fmt, ap); \
        va_end(ap);                                           \
        return false;                                         \
    }
ERROR_FN(berth_auth, AUTH)
ERROR_FN(berth_transient, TRANSIENT)
ERROR_FN(berth_permanent, PERMANENT)
ERROR_FN(berth_invalid_input, INVALID_INPUT)

void berth_buf_add(berth_buf *b, const char *data, size_t len) {
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + len + 1) cap *= 2;
        b->ptr = realloc(b->ptr, cap);
        if (!b->ptr) abort();
        b->cap = cap;
    }
    memcpy(b->ptr + b->len, data, len);
    b->len += len;
    b->ptr[b->len] = '\0';
}

void berth_buf_puts(berth_buf *b, const char *s) {
    berth_buf_add(b, s, strlen(s));
}

void berth_buf_printf(berth_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = vformat(fmt, ap);
    va_end(ap);
    berth_buf_puts(b, s);
    free(s);
}

char *berth_cstr(const connector_string_t *s) {
    char *out = malloc(s->len + 1);
    if (!out) abort();
    memcpy(out, s->ptr, s->len);
    out[s->len] = '\0';
    return out;
}

char *berth_strdup(const char *s) {
    size_t n = strlen(s);
    char *out = malloc(n + 1);
    if (!out) abort();
    memcpy(out, s, n + 1);
    return out;
}

void berth_set_str(connector_string_t *dst, const char *s) {
    connector_string_dup(dst, s);
}

char *berth_config(const char *key) {
    connector_string_t k, value;
    connector_string_set(&k, key);
    if (!berth_connector_config_get(&k, &value)) return NULL;
    return berth_cstr(&value);
}

bool berth_required_config(const char *key, char **out, berth_error *err) {
    *out = berth_config(key);
    if (*out) return true;
    return berth_permanent(err,
        "shop config is missing `%s`: add it under the shop's [shops.*.settings] or [shops.*.secrets] in berth.toml", key);
}

bool berth_send(berth_connector_http_method_t method, const char *url, const char *const *headers,
                const uint8_t *body, size_t body_len, berth_connector_http_response_t *resp, berth_error *err) {
    size_t n = 0;
    while (headers && headers[2 * n]) n++;
    connector_tuple2_string_string_t *pairs = n ? calloc(n, sizeof(*pairs)) : NULL;
    for (size_t i = 0; i < n; i++) {
        connector_string_dup(&pairs[i].f0, headers[2 * i]);
        connector_string_dup(&pairs[i].f1, headers[2 * i + 1]);
    }
    berth_connector_http_request_t req = {0};
    req.method = method;
    connector_string_dup(&req.url, url);
    req.headers.ptr = pairs;
    req.headers.len = n;
    req.body.ptr = (uint8_t *)body;
    req.body.len = body_len;
    req.timeout_ms.is_some = false;
    berth_connector_http_http_error_t e;
    if (berth_connector_http_send(&req, resp, &e)) return true;
    switch (e.tag) {
        case BERTH_CONNECTOR_HTTP_HTTP_ERROR_THROTTLED: return berth_rate_limited(err, e.val.throttled);
        case BERTH_CONNECTOR_HTTP_HTTP_ERROR_DENIED:
            return berth_permanent(err, "host refused the request: %s", berth_cstr(&e.val.denied));
        case BERTH_CONNECTOR_HTTP_HTTP_ERROR_TIMEOUT: return berth_transient(err, "timed out calling %s", url);
        case BERTH_CONNECTOR_HTTP_HTTP_ERROR_CONNECTION:
            return berth_transient(err, "connection failed: %s", berth_cstr(&e.val.connection));
        case BERTH_CONNECTOR_HTTP_HTTP_ERROR_TOO_LARGE:
            return berth_transient(err, "response exceeded the host's %llu-byte cap", (unsigned long long)e.val.too_large);
        default: return berth_invalid_input(err, "request refused: %s", berth_cstr(&e.val.invalid_request));
    }
}

static bool same_name(const connector_string_t *s, const char *name) {
    size_t n = strlen(name);
    if (s->len != n) return false;
    for (size_t i = 0; i < n; i++) {
        char a = (char)s->ptr[i], b = name[i];
        if (a >= 'A' && a <= 'Z') a = (char)(a - 'A' + 'a');
        if (b >= 'A' && b <= 'Z') b = (char)(b - 'A' + 'a');
        if (a != b) return false;
    }
    return true;
}

static char *find_header(const connector_list_tuple2_string_string_t *headers, const char *name) {
    for (size_t i = 0; i < headers->len; i++)
        if (same_name(&headers->ptr[i].f0, name)) return berth_cstr(&headers->ptr[i].f1);
    return NULL;
}

char *berth_header(const berth_connector_http_response_t *resp, const char *name) {
    return find_header(&resp->headers, name);
}

char *berth_webhook_header(const connector_webhook_request_t *req, const char *name) {
    return find_header(&req->headers, name);
}

char *berth_base64(const uint8_t *data, size_t len) {
    connector_list_u8_t in = { (uint8_t *)data, len };
    connector_string_t out;
    berth_connector_crypto_base64_encode(&in, &out);
    return berth_cstr(&out);
}

char *berth_hmac_sha256_base64(const char *key, const uint8_t *data, size_t len) {
    connector_list_u8_t k = { (uint8_t *)key, strlen(key) }, d = { (uint8_t *)data, len }, mac;
    berth_connector_crypto_hmac_sha256(&k, &d, &mac);
    return berth_base64(mac.ptr, mac.len);
}

bool berth_same(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la != lb) return false;
    unsigned char diff = 0;
    for (size_t i = 0; i < la; i++) diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

char *berth_url_encode(const char *s) {
    static const char hex[] = "0123456789ABCDEF";
    berth_buf b = {0};
    berth_buf_add(&b, "", 0);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            berth_buf_add(&b, (const char *)p, 1);
        } else {
            char esc[3] = { '%', hex[*p >> 4], hex[*p & 15] };
            berth_buf_add(&b, esc, 3);
        }
    }
    return b.ptr;
}

void berth_mask_name(const char *name, connector_string_t *out) {
    while (*name == ' ') name++;
    size_t len = strlen(name);
    while (len && name[len - 1] == ' ') len--;
    if (!len) { berth_set_str(out, ""); return; }
    /* Keep the first UTF-8 character whole. */
    size_t first = 1;
    while (first < len && ((unsigned char)name[first] & 0xC0) == 0x80) first++;
    size_t rest = 0;
    for (size_t i = first; i < len; i++) if (((unsigned char)name[i] & 0xC0) != 0x80) rest++;
    if (rest == 0) rest = 1;
    berth_buf b = {0};
    berth_buf_add(&b, name, first);
    for (size_t i = 0; i < rest; i++) berth_buf_add(&b, "*", 1);
    berth_set_str(out, b.ptr);
}

void berth_mask_phone(const char *phone, connector_string_t *out) {
    berth_buf digits = {0};
    berth_buf_add(&digits, "", 0);
    for (const char *p = phone; *p; p++) if (*p >= '0' && *p <= '9') berth_buf_add(&digits, p, 1);
    berth_buf b = {0};
    berth_buf_add(&b, "", 0);
    size_t keep = digits.len > 4 ? 4 : 0;
    for (size_t i = 0; i < digits.len - keep; i++) berth_buf_add(&b, "*", 1);
    if (keep) berth_buf_add(&b, digits.ptr + digits.len - 4, 4);
    berth_set_str(out, b.ptr);
}

bool berth_parse_minor(const char *text, int64_t *out) {
    const char *p = text;
    while (*p == ' ') p++;
    bool neg = *p == '-';
    if (neg) p++;
    int64_t whole = 0;
    int digits = 0;
    while (*p >= '0' && *p <= '9') {
        if (whole > (INT64_MAX - 9) / 10 / 100) return false;
        whole = whole * 10 + (*p++ - '0');
        digits++;
    }
    int64_t frac = 0;
    int frac_digits = 0;
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') {
            if (++frac_digits > 2) return false;
            frac = frac * 10 + (*p++ - '0');
        }
    }
    while (*p == ' ') p++;
    if (*p != '\0' || (digits == 0 && frac_digits == 0)) return false;
    if (frac_digits == 1) frac *= 10;
    int64_t v = whole * 100 + frac;
    *out = neg ? -v : v;
    return true;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

bool berth_parse_iso_utc(const char *text, int64_t *ms) {
    int y, mo, d, h, mi, s;
    char tail;
    if (!text || sscanf(text, "%4d-%2d-%2dT%2d:%2d:%2d%c", &y, &mo, &d, &h, &mi, &s, &tail) != 6) return false;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60) return false;
    *ms = ((days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400) + h * 3600 + mi * 60 + s) * 1000;
    return true;
}

void berth_format_iso_utc(int64_t secs, char out[20]) {
    int64_t days = secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400);
    int64_t rem = secs - days * 86400;
    /* civil_from_days */
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = (int64_t)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    unsigned d = doy - (153 * mp + 2) / 5 + 1;
    unsigned m = mp < 10 ? mp + 3 : mp - 9;
    y += m <= 2;
    snprintf(out, 20, "%04lld-%02u-%02uT%02lld:%02lld:%02lld", (long long)y, m, d, (long long)(rem / 3600),
             (long long)(rem % 3600 / 60), (long long)(rem % 60));
}

void berth_log(berth_connector_log_level_t level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *msg = vformat(fmt, ap);
    va_end(ap);
    connector_string_t s = { (uint8_t *)msg, strlen(msg) };
    berth_connector_log_log(level, &s);
}

void berth_counter_add(const char *name, uint64_t value) {
    connector_string_t n;
    connector_string_set(&n, name);
    connector_list_tuple2_string_string_t labels = { NULL, 0 };
    berth_connector_metrics_counter_add(&n, &labels, value);
}
