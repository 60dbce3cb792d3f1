/* eigen-alignment core: status codes, error messages, RNG, small numeric helpers. */
#ifndef EA_CORE_H
#define EA_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EA_VERSION "0.1.0"

/* Every fallible library call returns an ea_status; on failure a message naming the
 * file and the problem is available from ea_last_error() (per thread). */
typedef enum {
    EA_OK = 0,
    EA_ERR_IO = -1,          /* cannot open/read/write a path */
    EA_ERR_FORMAT = -2,      /* malformed or hostile file contents */
    EA_ERR_NOMEM = -3,       /* allocation failed or size overflow */
    EA_ERR_ARG = -4,         /* invalid argument from the caller */
    EA_ERR_UNSUPPORTED = -5, /* valid but not supported (dtype, activation...) */
    EA_ERR_NUMERIC = -6,     /* NaN/Inf or a failed decomposition */
    EA_ERR_MISMATCH = -7     /* file does not fit the model */
} ea_status;

const char *ea_last_error(void);
const char *ea_status_name(ea_status s);
/* Record a message for the current thread and return code (for `return ea_error(...)`). */
ea_status ea_error(ea_status code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Copy src into dst (cap bytes, always NUL-terminated) with every control byte, C1 control and
 * invalid UTF-8 byte written as \xNN, so quoted names and file contents cannot drive a terminal;
 * newlines are kept. Returns the length written. ea_error applies it to every message. */
size_t ea_escape_text(char *dst, size_t cap, const char *src);

/* Deterministic PRNG (xoshiro256**), seeded by splitmix64. */
typedef struct { uint64_t s[4]; } ea_rng;
void ea_rng_seed(ea_rng *r, uint64_t seed);
uint64_t ea_rng_u64(ea_rng *r);
double ea_rng_uniform(ea_rng *r);          /* [0, 1) */
double ea_rng_normal(ea_rng *r);           /* standard normal */
uint64_t ea_rng_below(ea_rng *r, uint64_t n); /* uniform in [0, n) */

/* IEEE half and bfloat16 conversion. */
float ea_f16_to_f32(uint16_t h);
uint16_t ea_f32_to_f16(float f);
float ea_bf16_to_f32(uint16_t h);
void ea_f16_to_f32_array(const uint16_t *src, float *dst, size_t n);

/* Overflow-checked size arithmetic: return 0 on success, -1 on overflow. */
int ea_mul_size(size_t a, size_t b, size_t *out);
int ea_add_size(size_t a, size_t b, size_t *out);

/* Output files are written under a temporary name and renamed on commit, so an
 * interrupted run never leaves a truncated file where a good one was. Where the filesystem
 * supports it the temporary is an unnamed O_TMPFILE, named only at commit, so not even SIGKILL
 * leaves a file behind (EA_NO_O_TMPFILE=1 forces the named temporary, for tests). A symlinked path
 * is followed: the file it points to is replaced, the link stays. A character device or a FIFO
 * (/dev/null, /dev/stdout, a pipe) is written through in place, never replaced; a FIFO without a
 * reader, a directory, a block device or a socket is refused. */
typedef struct {
    void *fp;            /* FILE* */
    char *path;          /* final path (symlinks resolved) */
    char *tmp;           /* named temporary in the same directory, "<path>.tmp.XXXXXX", or NULL */
    int reg;             /* internal: slot in the table of open temporaries */
    int mode;            /* internal: named temporary, unnamed (O_TMPFILE) or written through */
} ea_outfile;
ea_status ea_outfile_open(ea_outfile *o, const char *path);
ea_status ea_outfile_commit(ea_outfile *o); /* flush, fsync, link/rename; frees */
void ea_outfile_abort(ea_outfile *o);       /* remove the temporary; frees */
/* Named temporaries of outfiles still open are kept in a small table. For executables: install
 * handlers for every signal whose default action terminates the process (SIGHUP, SIGINT, SIGQUIT,
 * SIGPIPE, SIGALRM, SIGTERM, SIGUSR1/2, SIGXCPU, SIGXFSZ, ..., and the faults) that unlink them
 * and then die of the same signal (default action, so the exit status still says "killed by
 * signal"). A temporary is created and registered with those signals blocked, so no instant is
 * uncovered. Signals that are ignored or already have a handler are left alone. Never called by
 * the library itself. */
void ea_outfile_install_signal_cleanup(void);
/* Unlink the open temporaries; async-signal-safe, for programs with handlers of their own. */
void ea_outfile_remove_temporaries(void);
/* Write a whole buffer atomically. */
ea_status ea_write_file_atomic(const char *path, const void *data, size_t n);
/* Open an existing input file read-only without ever blocking (a FIFO is refused, not waited
 * on): anything but a regular file is refused with a message naming the path and what it is. */
ea_status ea_open_input(const char *path, int *fd);
/* Read a whole (small) file into a NUL-terminated buffer; max_bytes bounds it. */
ea_status ea_read_file(const char *path, size_t max_bytes, char **data, size_t *n);

/* For executables, first thing in main(): re-execute once with OPENBLAS_CORETYPE=Haswell when
 * OpenBLAS fell back to SSE3 kernels on a CPU with AVX2+FMA, and with a short OpenMP spin
 * (GOMP_SPINCOUNT) unless the user set a wait policy. EA_NO_REEXEC=1 disables it. Returns only if
 * nothing needed doing or exec failed. Never called by the library itself. */
void ea_process_tune(char **argv);

/* Wall clock in seconds (monotonic). */
double ea_time_now(void);

#ifdef __cplusplus
}
#endif
#endif
