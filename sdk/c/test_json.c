/* Native tests of berth_json.c: what a platform may send, well-formed or not. */
#include "berth_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond)                                                  \
    do {                                                             \
        if (!(cond)) {                                               \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                              \
        }                                                            \
    } while (0)

static json_node *parse(const char *text, const char **error) {
    return json_parse((const uint8_t *)text, strlen(text), error);
}

int main(void) {
    const char *error = NULL;
    json_node *root = parse(" {\"id\": 12, \"total\": \"12.30\", \"ok\": true, \"none\": null,"
                            " \"name\": \"Li \\u5f20 \\ud83d\\ude00 \\\"q\\\"\", \"lines\": [{\"q\": 2}, {\"q\": -3.5e1}]} ", &error);
    CHECK(root != NULL);
    int64_t id = 0;
    CHECK(json_i64(json_get(root, "id"), &id) && id == 12);
    CHECK(strcmp(json_str(json_get(root, "total")), "12.30") == 0);
    CHECK(json_is(json_get(root, "ok"), JSON_BOOL) && json_get(root, "ok")->boolean);
    CHECK(json_is(json_get(root, "none"), JSON_NULL));
    /* \u5f20 is 张 (3 bytes), the surrogate pair is U+1F600 (4 bytes). */
    CHECK(strcmp(json_str(json_get(root, "name")), "Li \xe5\xbc\xa0 \xf0\x9f\x98\x80 \"q\"") == 0);
    json_node *lines = json_get(root, "lines");
    CHECK(lines && lines->child_count == 2);
    CHECK(json_at(lines, 1) && json_at(lines, 1)->first_child->number == -35.0);
    CHECK(json_at(lines, 2) == NULL);
    CHECK(json_get(root, "missing") == NULL);
    CHECK(json_str(json_get(root, "id")) == NULL);
    CHECK(!json_i64(json_get(root, "total"), &id));

    const char *bad[] = {
        "", "{", "[1,]", "{\"a\" 1}", "{\"a\":1,}", "<html>503</html>", "\"unterminated", "[1] 2",
        "\"\\x\"", "\"\\u12G4\"", "{\"a\":01x}", "\"tab\tinside\"", "nul", "[\"a\",",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        error = NULL;
        CHECK(parse(bad[i], &error) == NULL && error != NULL);
    }
    /* Deep nesting is refused, not a stack overflow. */
    char deep[2001];
    memset(deep, '[', 2000);
    deep[2000] = '\0';
    error = NULL;
    CHECK(parse(deep, &error) == NULL && strcmp(error, "nested too deeply") == 0);
    /* Truncated in the middle of an escape. */
    const uint8_t cut[] = { '"', 'a', '\\' };
    CHECK(json_parse(cut, sizeof cut, &error) == NULL);

    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("berth_json: all checks passed\n");
    return 0;
}
