/* Strict UTF-8 validation, as strict as PCRE2's own check: the pre-tokenizer hands PCRE2 only
 * runs that pass it, with PCRE2_NO_UTF_CHECK (matching invalid UTF-8 that way is undefined). */
#include <string.h>

#include "tokenizer/internal.h"

size_t ea_tok_utf8_valid_prefix(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        /* Text is mostly ASCII: skip 8 bytes at a time while none has its high bit set. */
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= len) break;
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t need;
        unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte (table 3-7) */
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;      /* no overlongs */
            else if (c == 0xED) hi = 0x9F; /* no surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;      /* no overlongs */
            else if (c == 0xF4) hi = 0x8F; /* nothing above U+10FFFF */
        } else {
            return i; /* continuation byte, C0/C1 or F5..FF */
        }
        if (len - i <= need) return i; /* cut short */
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80) return i;
        i += need + 1;
    }
    return len;
}
