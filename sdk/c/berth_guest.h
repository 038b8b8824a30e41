/* Helpers for berth connectors written in C, over the bindings wit-bindgen generates
 * for the berth:connector world (connector.h).
 *
 * Memory: berth runs every call in a fresh instance, so helpers malloc and never free;
 * everything an export returns must be malloc'd (the generated post-return frees it),
 * which is why results are set with berth_set_str and never point at static text.
 */
#ifndef BERTH_GUEST_H
#define BERTH_GUEST_H

#include "connector.h"
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef connector_connector_error_t berth_error;

/* Errors the host acts on; each returns false so `return berth_transient(err, ...)` reads well. */
bool berth_rate_limited(berth_error *err, uint64_t ms);
bool berth_auth(berth_error *err, const char *fmt, ...);
bool berth_transient(berth_error *err, const char *fmt, ...);
bool berth_permanent(berth_error *err, const char *fmt, ...);
bool berth_invalid_input(berth_error *err, const char *fmt, ...);

/* A growable byte buffer, always NUL-terminated. */
typedef struct {
    char *ptr;
    size_t len;
    size_t cap;
} berth_buf;
void berth_buf_add(berth_buf *b, const char *data, size_t len);
void berth_buf_puts(berth_buf *b, const char *s);
void berth_buf_printf(berth_buf *b, const char *fmt, ...);

/* A NUL-terminated copy of a WIT string. */
char *berth_cstr(const connector_string_t *s);
/* Set a WIT string to a malloc'd copy of `s`. */
void berth_set_str(connector_string_t *dst, const char *s);
char *berth_strdup(const char *s);

/* The shop's setting or secret, or NULL. */
char *berth_config(const char *key);
/* The setting, or a permanent error naming the key ops must add. */
bool berth_required_config(const char *key, char **out, berth_error *err);

/* Send through the host. `headers` is NULL or a NULL-terminated list of name, value
 * pairs. Host refusals become connector errors (throttled -> rate-limited, timeout and
 * connection -> transient, denied -> permanent). */
bool berth_send(berth_connector_http_method_t method, const char *url, const char *const *headers,
                const uint8_t *body, size_t body_len, berth_connector_http_response_t *resp, berth_error *err);
/* A response header's value (case-insensitive name), or NULL. */
char *berth_header(const berth_connector_http_response_t *resp, const char *name);
/* A request header's value in a webhook. */
char *berth_webhook_header(const connector_webhook_request_t *req, const char *name);

char *berth_base64(const uint8_t *data, size_t len);
char *berth_hmac_sha256_base64(const char *key, const uint8_t *data, size_t len);
/* Equal strings, compared in time independent of where they differ. */
bool berth_same(const char *a, const char *b);

/* Percent-encode everything but unreserved characters. */
char *berth_url_encode(const char *s);
/* First character kept, the rest masked; the last four digits of a phone kept. */
void berth_mask_name(const char *name, connector_string_t *out);
void berth_mask_phone(const char *phone, connector_string_t *out);
/* "12.30" -> 1230 (two fraction digits at most, no floating point). */
bool berth_parse_minor(const char *text, int64_t *out);
/* "YYYY-MM-DDTHH:MM:SS" taken as UTC -> Unix milliseconds. */
bool berth_parse_iso_utc(const char *text, int64_t *ms);
/* Unix seconds -> "YYYY-MM-DDTHH:MM:SS" (UTC), into out[20]. */
void berth_format_iso_utc(int64_t secs, char out[20]);

void berth_log(berth_connector_log_level_t level, const char *fmt, ...);
void berth_counter_add(const char *name, uint64_t value);

#endif
