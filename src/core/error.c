/* Per-thread error message: library functions never print or exit. */
#include "ea/core.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char ea_errbuf[1024];

const char *ea_last_error(void) { return ea_errbuf[0] ? ea_errbuf : "no error"; }

ea_status ea_error(ea_status code, const char *fmt, ...) {
    /* format aside first: an argument may be ea_last_error() itself (wrapping a lower error) */
    char msg[sizeof ea_errbuf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    memcpy(ea_errbuf, msg, sizeof msg);
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
