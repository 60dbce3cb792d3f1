/* Per-thread error message (control bytes escaped): library functions never print or exit. */
#include "ea/core.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char ea_errbuf[1024];

const char *ea_last_error(void) { return ea_errbuf[0] ? ea_errbuf : "no error"; }

/* Length of the valid UTF-8 sequence at s that is not a C1 control (U+0080..U+009F), else 0. */
static size_t utf8_printable(const unsigned char *s) {
    size_t n = s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 && s[0] < 0xe0 ? 2 : 0;
    if (s[0] >= 0xf5) return 0;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    if (n == 2 && s[0] == 0xc2 && s[1] < 0xa0) return 0;
    if (n == 3 && ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0))) return 0;
    if (n == 4 && ((s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90))) return 0;
    return n;
}

size_t ea_escape_text(char *dst, size_t cap, const char *src) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (!cap) return 0;
    for (const unsigned char *p = (const unsigned char *)src; *p;) {
        size_t n = *p >= 0x80 ? utf8_printable(p) : (*p >= 0x20 && *p != 0x7f) || *p == '\n' ? 1 : 0;
        if (n) {
            if (o + n >= cap) break;
            memcpy(dst + o, p, n);
            o += n;
            p += n;
        } else {
            if (o + 4 >= cap) break;
            dst[o++] = '\\';
            dst[o++] = 'x';
            dst[o++] = hex[*p >> 4];
            dst[o++] = hex[*p & 15];
            p++;
        }
    }
    dst[o] = 0;
    return o;
}

ea_status ea_error(ea_status code, const char *fmt, ...) {
    /* format aside first: an argument may be ea_last_error() itself (wrapping a lower error) */
    char msg[8 * sizeof ea_errbuf];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* A long path first must not push the reason (at the end) out: keep head and tail. */
    size_t keep = sizeof ea_errbuf / 4;
    if (n > 0 && (size_t)n >= sizeof ea_errbuf / 2) {
        size_t len = strlen(msg);
        memmove(msg + keep, "...", 3);
        memmove(msg + keep + 3, msg + len - keep, keep + 1);
    }
    /* Messages quote file names and contents: no raw control byte may reach a terminal. */
    ea_escape_text(ea_errbuf, sizeof ea_errbuf, msg);
    return code;
}

const char *ea_status_name(ea_status s) {
    switch (s) {
    case EA_OK: return "ok";
    case EA_ERR_IO: return "io error";
    case EA_ERR_FORMAT: return "format error";
    case EA_ERR_NOMEM: return "out of memory";
    case EA_ERR_ARG: return "invalid argument";
    case EA_ERR_UNSUPPORTED: return "unsupported";
    case EA_ERR_NUMERIC: return "numeric error";
    case EA_ERR_MISMATCH: return "mismatch";
    case EA_STOPPED: return "stopped";
    }
    return "unknown";
}
