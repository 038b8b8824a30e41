#include "berth_json.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
    const char *error;
    int depth;
} parser;

#define MAX_DEPTH 64

static json_node *node_new(json_type type) {
    json_node *n = calloc(1, sizeof(json_node));
    if (n) n->type = type;
    return n;
}

static void skip_ws(parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static json_node *fail(parser *ps, const char *why) {
    if (!ps->error) ps->error = why;
    return NULL;
}

static int hex4(const uint8_t *p, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return 0;
    }
    *out = v;
    return 1;
}

static size_t put_utf8(char *out, uint32_t cp) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18)); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* At the opening quote; decodes into a fresh buffer. */
static char *parse_string(parser *ps, size_t *len_out) {
    ps->p++;
    const uint8_t *start = ps->p;
    /* Decoded text is never longer than the source. */
    size_t cap = 0;
    while (start + cap < ps->end && start[cap] != '"') cap += (start[cap] == '\\') ? 2 : 1;
    char *out = malloc(cap + 1);
    if (!out) { fail(ps, "out of memory"); return NULL; }
    size_t n = 0;
    while (ps->p < ps->end && *ps->p != '"') {
        uint8_t c = *ps->p++;
        if (c < 0x20) { fail(ps, "control character in a string"); return NULL; }
        if (c != '\\') { out[n++] = (char)c; continue; }
        if (ps->p >= ps->end) break;
        uint8_t e = *ps->p++;
        switch (e) {
            case '"': out[n++] = '"'; break;
            case '\\': out[n++] = '\\'; break;
            case '/': out[n++] = '/'; break;
            case 'b': out[n++] = '\b'; break;
            case 'f': out[n++] = '\f'; break;
            case 'n': out[n++] = '\n'; break;
            case 'r': out[n++] = '\r'; break;
            case 't': out[n++] = '\t'; break;
            case 'u': {
                uint32_t cp;
                if (ps->end - ps->p < 4 || !hex4(ps->p, &cp)) { fail(ps, "bad \\u escape"); return NULL; }
                ps->p += 4;
                if (cp >= 0xD800 && cp < 0xDC00 && ps->end - ps->p >= 6 && ps->p[0] == '\\' && ps->p[1] == 'u') {
                    uint32_t lo;
                    if (hex4(ps->p + 2, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        ps->p += 6;
                    }
                }
                n += put_utf8(out + n, cp);
                break;
            }
            default: fail(ps, "bad escape in a string"); return NULL;
        }
    }
    if (ps->p >= ps->end) { fail(ps, "unterminated string"); return NULL; }
    ps->p++;
    out[n] = '\0';
    *len_out = n;
    return out;
}

static json_node *parse_value(parser *ps);

static json_node *parse_container(parser *ps, bool object) {
    json_node *n = node_new(object ? JSON_OBJECT : JSON_ARRAY);
    if (!n) return fail(ps, "out of memory");
    if (++ps->depth > MAX_DEPTH) return fail(ps, "nested too deeply");
    ps->p++;
    json_node **tail = &n->first_child;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == (object ? '}' : ']')) { ps->p++; ps->depth--; return n; }
    for (;;) {
        char *key = NULL;
        size_t key_len;
        skip_ws(ps);
        if (object) {
            if (ps->p >= ps->end || *ps->p != '"') return fail(ps, "expected a member name");
            key = parse_string(ps, &key_len);
            if (!key) return NULL;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') return fail(ps, "expected ':'");
            ps->p++;
        }
        json_node *child = parse_value(ps);
        if (!child) return NULL;
        child->key = key;
        *tail = child;
        tail = &child->next;
        n->child_count++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
        if (ps->p < ps->end && *ps->p == (object ? '}' : ']')) { ps->p++; ps->depth--; return n; }
        return fail(ps, object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static bool literal(parser *ps, const char *word) {
    size_t len = strlen(word);
    if ((size_t)(ps->end - ps->p) < len || memcmp(ps->p, word, len) != 0) return false;
    ps->p += len;
    return true;
}

static json_node *parse_value(parser *ps) {
    skip_ws(ps);
    if (ps->p >= ps->end) return fail(ps, "unexpected end of input");
    uint8_t c = *ps->p;
    if (c == '{') return parse_container(ps, true);
    if (c == '[') return parse_container(ps, false);
    if (c == '"') {
        json_node *n = node_new(JSON_STRING);
        if (!n) return fail(ps, "out of memory");
        n->text = parse_string(ps, &n->text_len);
        return n->text ? n : NULL;
    }
    if (literal(ps, "true") || literal(ps, "false")) {
        json_node *n = node_new(JSON_BOOL);
        if (!n) return fail(ps, "out of memory");
        n->boolean = ps->p[-1] == 'e' && ps->p[-2] == 'u';
        return n;
    }
    if (literal(ps, "null")) return node_new(JSON_NULL);
    if (c == '-' || (c >= '0' && c <= '9')) {
        const uint8_t *start = ps->p;
        ps->p++;
        while (ps->p < ps->end && ((*ps->p >= '0' && *ps->p <= '9') || *ps->p == '.' || *ps->p == 'e' || *ps->p == 'E' || *ps->p == '+' || *ps->p == '-')) ps->p++;
        json_node *n = node_new(JSON_NUMBER);
        if (!n) return fail(ps, "out of memory");
        n->text_len = (size_t)(ps->p - start);
        n->text = malloc(n->text_len + 1);
        if (!n->text) return fail(ps, "out of memory");
        memcpy(n->text, start, n->text_len);
        n->text[n->text_len] = '\0';
        char *endp;
        n->number = strtod(n->text, &endp);
        if (*endp != '\0') return fail(ps, "malformed number");
        return n;
    }
    return fail(ps, "unexpected character");
}

json_node *json_parse(const uint8_t *data, size_t len, const char **error) {
    parser ps = { data, data + len, NULL, 0 };
    json_node *root = parse_value(&ps);
    if (root) {
        skip_ws(&ps);
        if (ps.p != ps.end) { root = NULL; fail(&ps, "trailing characters after the value"); }
    }
    if (!root && error) *error = ps.error ? ps.error : "invalid JSON";
    return root;
}

json_node *json_get(const json_node *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJECT) return NULL;
    for (json_node *c = obj->first_child; c; c = c->next)
        if (c->key && strcmp(c->key, key) == 0) return c;
    return NULL;
}

json_node *json_at(const json_node *arr, size_t index) {
    if (!arr || arr->type != JSON_ARRAY) return NULL;
    json_node *c = arr->first_child;
    while (c && index--) c = c->next;
    return c;
}

const char *json_str(const json_node *node) {
    return node && node->type == JSON_STRING ? node->text : NULL;
}

bool json_i64(const json_node *node, int64_t *out) {
    if (!node || (node->type != JSON_NUMBER && node->type != JSON_STRING) || !node->text || !node->text[0]) return false;
    char *endp;
    long long v = strtoll(node->text, &endp, 10);
    if (*endp != '\0') return false;
    *out = v;
    return true;
}

bool json_is(const json_node *node, json_type type) {
    return node && node->type == type;
}
