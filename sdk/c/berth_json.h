/* A small JSON reader for berth connectors written in C.
 *
 * json_parse builds a tree from a buffer; every node and string is malloc'd and lives
 * until the call ends (berth gives each call a fresh instance, so connectors need not
 * free it). Strings are decoded (escapes, \uXXXX including surrogate pairs, to UTF-8)
 * and NUL-terminated.
 */
#ifndef BERTH_JSON_H
#define BERTH_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_node {
    json_type type;
    bool boolean;
    double number;
    /* The number as written ("12.30"), or the decoded string. */
    char *text;
    size_t text_len;
    /* Object member name. */
    char *key;
    struct json_node *first_child;
    struct json_node *next;
    size_t child_count;
} json_node;

/* NULL on a syntax error; *error (when given) then says what and where. */
json_node *json_parse(const uint8_t *data, size_t len, const char **error);

/* Object member by name, or NULL (also when obj is not an object). */
json_node *json_get(const json_node *obj, const char *key);
/* Array element by index, or NULL. */
json_node *json_at(const json_node *arr, size_t index);
/* The string, or NULL when the node is missing or not a string. */
const char *json_str(const json_node *node);
/* Numbers, and strings holding numbers; false when neither. */
bool json_i64(const json_node *node, int64_t *out);
bool json_is(const json_node *node, json_type type);

#endif
