/* eigen-alignment core: status codes, error messages, RNG, small numeric helpers. */
#ifndef EA_CORE_H
#define EA_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EA_VERSION "0.1.0"

/* Marks every public declaration. The library is compiled with -fvisibility=hidden, so only
 * these names are exported from a shared build; the rest stay internal (the static library
 * still links them, which is how tests reach internal code). */
#if defined(__GNUC__)
#define EA_API __attribute__((visibility("default")))
#else
#define EA_API
#endif

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
    EA_ERR_MISMATCH = -7,    /* file does not fit the model */
    EA_STOPPED = 1           /* not an error: a capture hook ended a forward pass early on purpose */
} ea_status;

EA_API const char *ea_last_error(void);
EA_API const char *ea_status_name(ea_status s);
/* Record a message for the current thread and return code (for `return ea_error(...)`). */
EA_API ea_status ea_error(ea_status code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Progress of a long-running call, for the caller to render (the library never prints): stage
 * names the work, done of total units (tokens, windows or items, as the call documents). Called
 * on the calling thread; user is the pointer given beside the callback. */
typedef void (*ea_progress_fn)(void *user, const char *stage, size_t done, size_t total);

/* Copy src into dst (cap bytes, always NUL-terminated) with every control byte, C1 control and
 * invalid UTF-8 byte written as \xNN, so quoted names and file contents cannot drive a terminal;
 * newlines are kept. Returns the length written. ea_error applies it to every message. */
EA_API size_t ea_escape_text(char *dst, size_t cap, const char *src);

/* Deterministic PRNG (xoshiro256**), seeded by splitmix64. */
typedef struct { uint64_t s[4]; } ea_rng;
EA_API void ea_rng_seed(ea_rng *r, uint64_t seed);
EA_API uint64_t ea_rng_u64(ea_rng *r);
EA_API double ea_rng_uniform(ea_rng *r);          /* [0, 1) */
EA_API double ea_rng_normal(ea_rng *r);           /* standard normal */
EA_API uint64_t ea_rng_below(ea_rng *r, uint64_t n); /* uniform in [0, n) */

/* IEEE half and bfloat16 conversion. */
EA_API float ea_f16_to_f32(uint16_t h);
EA_API uint16_t ea_f32_to_f16(float f);
EA_API float ea_bf16_to_f32(uint16_t h);
EA_API void ea_f16_to_f32_array(const uint16_t *src, float *dst, size_t n);

/* Kernel tiers. The library is built for baseline x86-64 and carries AVX2 (x86-64-v3: AVX2, FMA,
 * F16C) and AVX-512 (x86-64-v4) kernels, chosen at run time: the best this CPU supports, or the
 * tier the environment variable EA_ISA=generic|avx2|avx512 names. */
typedef enum { EA_ISA_GENERIC = 0, EA_ISA_AVX2 = 1, EA_ISA_AVX512 = 2 } ea_isa;
/* The tier the kernels run (*tier may be NULL). Fails when EA_ISA names an unknown tier
 * (EA_ERR_ARG) or one this CPU lacks (EA_ERR_UNSUPPORTED), with a message naming it; the kernels
 * then run generic, and ea_model_load and the KV codec constructors fail with the same error. */
EA_API ea_status ea_isa_tier(ea_isa *tier);
EA_API const char *ea_isa_name(ea_isa tier); /* "generic", "avx2", "avx512" */

/* Overflow-checked size arithmetic: return 0 on success, -1 on overflow. */
EA_API int ea_mul_size(size_t a, size_t b, size_t *out);
EA_API int ea_add_size(size_t a, size_t b, size_t *out);

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
EA_API ea_status ea_outfile_open(ea_outfile *o, const char *path);
EA_API ea_status ea_outfile_commit(ea_outfile *o); /* flush, fsync, link/rename; frees */
EA_API void ea_outfile_abort(ea_outfile *o);       /* remove the temporary; frees */
/* Named temporaries of outfiles still open are kept in a small table. For executables: install
 * handlers for every signal whose default action terminates the process (SIGHUP, SIGINT, SIGQUIT,
 * SIGPIPE, SIGALRM, SIGTERM, SIGUSR1/2, SIGXCPU, SIGXFSZ, ..., and the faults) that unlink them
 * and then die of the same signal (default action, so the exit status still says "killed by
 * signal"). A temporary is created and registered with those signals blocked, so no instant is
 * uncovered. Signals that are ignored or already have a handler are left alone. Never called by
 * the library itself. */
EA_API void ea_outfile_install_signal_cleanup(void);
/* Unlink the open temporaries and empty and remove the registered temporary directories;
 * async-signal-safe, for programs with handlers of their own. */
EA_API void ea_outfile_remove_temporaries(void);
/* A private temporary directory: mkdtemp(tmpl) (tmpl ends in XXXXXX and is rewritten), created
 * with the cleanup signals blocked and registered, so the handlers above delete the files directly
 * inside it and the directory itself. At most 4 at once. NULL with errno on failure. */
EA_API char *ea_tempdir_create(char *tmpl);
/* Delete the files directly inside dir and dir itself, and forget it. NULL is accepted. */
EA_API void ea_tempdir_remove(const char *dir);
/* Write a whole buffer atomically. */
EA_API ea_status ea_write_file_atomic(const char *path, const void *data, size_t n);
/* Open an existing input file read-only without ever blocking (a FIFO is refused, not waited
 * on): anything but a regular file is refused with a message naming the path and what it is. */
EA_API ea_status ea_open_input(const char *path, int *fd);
/* Read a whole (small) file into a NUL-terminated buffer; max_bytes bounds it. */
EA_API ea_status ea_read_file(const char *path, size_t max_bytes, char **data, size_t *n);

/* For executables, first thing in main(): re-execute once with OPENBLAS_CORETYPE=Haswell when
 * OpenBLAS fell back to SSE3 kernels on a CPU with AVX2+FMA, and with a short OpenMP spin
 * (GOMP_SPINCOUNT) unless the user set a wait policy. EA_NO_REEXEC=1 disables it. Returns only if
 * nothing needed doing or exec failed. Never called by the library itself. */
EA_API void ea_process_tune(char **argv);
/* What ea_process_tune does short of re-executing: set those variables (OPENBLAS_CORETYPE,
 * GOMP_SPINCOUNT) in this process's environment, unless EA_NO_REEXEC is set. They take effect only
 * in processes started afterwards, since OpenBLAS and libgomp read them when they load; a host
 * that loads the library late (the Python package) runs this in a child and copies the result
 * into its environment before loading. Returns non-zero when it set anything. */
EA_API int ea_process_tune_env(void);

/* Wall clock in seconds (monotonic). */
EA_API double ea_time_now(void);

#ifdef __cplusplus
}
#endif
#endif
