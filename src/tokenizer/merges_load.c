/* merges.txt: one merge "left right" per line, in priority order (the line order is the rank).
 * Lines starting with "#version" are comments and blank lines are skipped; every other line must
 * name two vocabulary tokens whose concatenation is also a vocabulary token (as Hugging Face
 * tokenizers requires), so a merge always yields a known id. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/internal.h"

#define MERGES_MAX_BYTES ((size_t)256 << 20)

/* Decode one side of a merge into buf and look it up. */
static int32_t side_id(const ea_tok_bytes_map *map, const char *s, size_t n, unsigned char *buf, long *nb) {
    *nb = ea_tok_alphabet_decode(s, n, buf);
    return *nb < 0 ? -1 : ea_tok_bytes_map_find(map, buf, (size_t)*nb);
}

static ea_status parse_line(ea_tokenizer *t, const char *path, size_t line_no, const char *line, size_t n,
                            const ea_tok_bytes_map *map, unsigned char *buf, int32_t rank) {
    const char *sp = memchr(line, ' ', n);
    if (!sp || sp == line || sp + 1 == line + n || memchr(sp + 1, ' ', (size_t)(line + n - sp - 1)))
        return ea_error(EA_ERR_FORMAT, "%s:%zu: expected two tokens separated by one space, got \"%.*s\"", path, line_no,
                        (int)(n > 60 ? 60 : n), line);
    size_t na = (size_t)(sp - line), nbr = n - na - 1;
    long la, lb;
    int32_t a = side_id(map, line, na, buf, &la);
    if (a < 0)
        return ea_error(EA_ERR_FORMAT, "%s:%zu: token \"%.*s\" is not in the vocabulary", path, line_no,
                        (int)(na > 60 ? 60 : na), line);
    int32_t b = side_id(map, sp + 1, nbr, buf + la, &lb);
    if (b < 0)
        return ea_error(EA_ERR_FORMAT, "%s:%zu: token \"%.*s\" is not in the vocabulary", path, line_no,
                        (int)(nbr > 60 ? 60 : nbr), sp + 1);
    /* buf now holds the bytes of a followed by those of b. */
    int32_t ab = ea_tok_bytes_map_find(map, buf, (size_t)(la + lb));
    if (ab < 0)
        return ea_error(EA_ERR_FORMAT, "%s:%zu: the merge result \"%.*s%.*s\" is not in the vocabulary", path, line_no,
                        (int)(na > 60 ? 60 : na), line, (int)(nbr > 60 ? 60 : nbr), sp + 1);
    ea_tok_pair_map_put(&t->merges, a, b, rank, ab);
    return EA_OK;
}

ea_status ea_tok_merges_load(ea_tokenizer *t, const char *path, const ea_tok_bytes_map *map) {
    char *text = NULL;
    size_t len = 0;
    ea_status st = ea_read_file(path, MERGES_MAX_BYTES, &text, &len);
    if (st) return st;
    size_t lines = 1;
    for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
    unsigned char *buf = malloc(len + 1);
    if (!buf) st = ea_error(EA_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, len + 1);
    if (!st) st = ea_tok_pair_map_init(&t->merges, lines);
    int32_t rank = 0;
    size_t line_no = 0;
    for (const char *p = text, *end = text + len; !st && p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        size_t n = (size_t)(stop - p);
        line_no++;
        if (n > 0 && p[n - 1] == '\r') n--;
        if (n > 0 && !(n >= 8 && memcmp(p, "#version", 8) == 0)) {
            if (rank == INT32_MAX) st = ea_error(EA_ERR_FORMAT, "%s: too many merges", path);
            else st = parse_line(t, path, line_no, p, n, map, buf, rank++);
        }
        p = nl ? nl + 1 : end;
    }
    free(buf);
    free(text);
    return st;
}
