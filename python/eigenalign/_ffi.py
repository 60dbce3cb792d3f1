"""Loading libeigenalign through cffi (ABI mode: no compiler at install time) and turning its
status codes into Python exceptions.

The library is found, in this order: $EIGENALIGN_LIBRARY; next to this package; where
`cmake --install` put it (_paths.py); a build/ directory of the source tree this package sits in
(in-place use with PYTHONPATH=python); the system's library path.

Before the library (and with it OpenBLAS and libgomp) is loaded, the environment gets what the
`eigenalign` tool sets by re-executing itself (see ea_process_tune_env): both runtimes read
those variables only when they load, so this must happen first, and a re-exec is out of the
question inside an interpreter. The library decides them itself, in a short child process.
"""
import ctypes.util
import os
import subprocess
import sys
import threading

import cffi

ffi = cffi.FFI()
# Declarations copied from include/ea/*.h (only what the package calls). Structs must match the
# headers field for field: tests/test_api.py compares them.
ffi.cdef(r"""
typedef enum { EA_OK = 0, EA_ERR_IO = -1, EA_ERR_FORMAT = -2, EA_ERR_NOMEM = -3, EA_ERR_ARG = -4,
               EA_ERR_UNSUPPORTED = -5, EA_ERR_NUMERIC = -6, EA_ERR_MISMATCH = -7 } ea_status;
const char *ea_last_error(void);
const char *ea_status_name(ea_status s);
int ea_process_tune_env(void);
ea_status ea_read_file(const char *path, size_t max_bytes, char **data, size_t *n);
double ea_time_now(void);
void free(void *p);

typedef struct { int n_layer, n_head, n_embd, n_positions, vocab_size, n_inner; float layer_norm_epsilon; } ea_config;

typedef struct ea_tokenizer ea_tokenizer;
ea_status ea_tokenizer_load_dir(const char *dir, ea_tokenizer **out);
void ea_tokenizer_free(ea_tokenizer *t);
ea_status ea_tokenizer_encode(const ea_tokenizer *t, const char *text, size_t len, int parse_special, int **ids, size_t *n);
ea_status ea_tokenizer_decode(const ea_tokenizer *t, const int *ids, size_t n, char **text, size_t *len);

typedef struct ea_model ea_model;
typedef struct ea_kvcache ea_kvcache;
typedef struct ea_kv_codec ea_kv_codec;
ea_status ea_model_load(const char *dir, ea_model **out);
void ea_model_free(ea_model *m);
const ea_config *ea_model_config(const ea_model *m);
const char *ea_model_fingerprint(const ea_model *m);
const float *ea_model_wte(const ea_model *m);
typedef enum { EA_SITE_HIDDEN = 0, EA_SITE_Q = 1, EA_SITE_K = 2, EA_SITE_V = 3 } ea_site;
typedef int (*ea_capture_fn)(void *user, ea_site site, int layer, int pos0, int n, int d, float *x, int ld);
void ea_model_set_capture(ea_model *m, ea_capture_fn fn, void *user);
ea_status ea_kvcache_init(ea_kvcache **out, const ea_config *cfg, int capacity, const ea_kv_codec *codec);
void ea_kvcache_free(ea_kvcache *c);
void ea_kvcache_reset(ea_kvcache *c);
int ea_kvcache_len(const ea_kvcache *c);
size_t ea_kvcache_bytes_for(const ea_kvcache *c, int ntok);
size_t ea_kvcache_allocated_bytes(const ea_kvcache *c);
ea_status ea_model_forward(ea_model *m, ea_kvcache *cache, const int *tokens, int n, float *logits, int all_logits);
typedef struct { float temperature; int top_k; float top_p; uint64_t seed; int stop_at_eot; } ea_sampler_params;
ea_sampler_params ea_sampler_default(void);
ea_status ea_generate(ea_model *m, ea_kvcache *cache, const int *prompt, int n_prompt, int n_new,
                      const ea_sampler_params *p, int *out, int *n_out);
typedef enum { EA_PPL_FULL = 0, EA_PPL_LLAMA = 1 } ea_ppl_protocol;
typedef struct { size_t tokens_scored; double mean_nll; double ppl; } ea_ppl_result;
int ea_ppl_first_scored(ea_ppl_protocol proto, int len);
ea_status ea_perplexity(ea_model *m, ea_kvcache *cache, const int *ids, size_t n, int ctx, ea_ppl_protocol proto,
                        ea_ppl_result *res);

ea_status ea_kv_codec_create(const char *spec, const ea_config *cfg, const void *stats, ea_kv_codec **out);
void ea_kv_codec_free(ea_kv_codec *c);
ea_status ea_kv_codec_save(const ea_kv_codec *c, const char *path);
ea_status ea_kv_codec_load(const char *path, const ea_config *cfg, ea_kv_codec **out);
double ea_kv_codec_bits_per_value(const ea_kv_codec *c);
size_t ea_kv_codec_bytes(const ea_kv_codec *c, int ntok);
size_t ea_kv_codec_overhead(const ea_kv_codec *c);
size_t ea_kv_codec_rows_stored(const ea_kv_codec *c, size_t ntok);
size_t ea_kv_codec_resident(const ea_kv_codec *c);
ea_status ea_kv_codec_fit_model(ea_model *m, const char *spec, const int *calib, size_t n_calib, int ctx, int verbose,
                                ea_kv_codec **out);

typedef struct ea_cov ea_cov;
ea_status ea_cov_init(ea_cov **out, int d);
void ea_cov_free(ea_cov *c);
double ea_cov_count(const ea_cov *c);
ea_status ea_cov_add(ea_cov *c, const float *x, int n, int ld);
ea_status ea_cov_merge(ea_cov *dst, const ea_cov *src);
typedef struct {
    int d; double n; double df; double trace; int k90, k95, k99; double *eigenvalues;
    int top_dims[8]; double top_share[8]; int n_top;
} ea_spectrum_summary;
ea_status ea_spectrum_summarize(const ea_cov *c, int standardize, ea_spectrum_summary *out);
void ea_spectrum_summary_free(ea_spectrum_summary *s);
ea_status ea_spectrum_null(int n, int d, uint64_t seed, double *df, int *k95);

typedef struct { ea_site site; int layer; int head; } ea_site_ref;
typedef struct ea_projector ea_projector;
typedef struct { double variance; int rank; } ea_rank_rule;
ea_status ea_projector_from_cov(const ea_cov *cov, ea_rank_rule rule, ea_site_ref ref, ea_projector **out);
ea_status ea_projector_from_parts(const char *what, ea_site_ref ref, int d, int k, const float *mean,
                                  const float *basis, const float *eigenvalues, double tol, ea_projector **out);
void ea_projector_free(ea_projector *p);
ea_site_ref ea_projector_site(const ea_projector *p);
int ea_projector_dim(const ea_projector *p);
int ea_projector_rank(const ea_projector *p);
const float *ea_projector_mean(const ea_projector *p);
const float *ea_projector_basis(const ea_projector *p);
const float *ea_projector_eigenvalues(const ea_projector *p);
double ea_projector_variance_kept(const ea_projector *p);
ea_status ea_projector_compress(const ea_projector *p, const float *x, int n, int ldx, float *z);
ea_status ea_projector_reconstruct(const ea_projector *p, const float *z, int n, float *x, int ldx);
typedef struct { double err2, norm2, cos_sum; size_t rows; } ea_recon_stats;
double ea_recon_stats_rel_error(const ea_recon_stats *s);
double ea_recon_stats_cosine(const ea_recon_stats *s);

typedef struct ea_compressor ea_compressor;
typedef struct {
    const char *fingerprint; int n_layer, n_embd, n_head; size_t calib_tokens; size_t calib_rows; int ctx;
    ea_rank_rule rule; int exclude_first; const char *library_version; int format_version;
} ea_compressor_info;
typedef struct {
    ea_rank_rule rule; unsigned sites; int per_head; int ctx; int exclude_first;
    void (*progress)(void *user, size_t done_tokens, size_t total_tokens); void *progress_user;
} ea_fit_params;
ea_fit_params ea_fit_params_default(void);
int ea_compress_default_ctx(const ea_config *cfg);
ea_status ea_compressor_fit(ea_model *m, const int *ids, size_t n, const ea_fit_params *p, ea_compressor **out);
void ea_compressor_free(ea_compressor *c);
const ea_compressor_info *ea_compressor_get_info(const ea_compressor *c);
int ea_compressor_count(const ea_compressor *c);
const ea_projector *ea_compressor_get(const ea_compressor *c, int i);
const ea_projector *ea_compressor_find(const ea_compressor *c, ea_site site, int layer, int head);
ea_status ea_compressor_save(const ea_compressor *c, const char *path);
ea_status ea_compressor_load(const char *path, ea_compressor **out);
ea_status ea_compressor_check_model(const ea_compressor *c, const char *what, const ea_model *m);
typedef struct {
    int ctx; int inject; void (*progress)(void *user, size_t done_tokens, size_t total_tokens); void *progress_user;
} ea_eval_params;
typedef struct {
    int n_sites; ea_recon_stats *site; size_t windows; size_t tokens; size_t scored;
    double nll_full, nll_compressed; double kl_sum; size_t top1_agree;
} ea_eval_result;
ea_status ea_eval_result_init(ea_eval_result *r, const ea_compressor *c);
void ea_eval_result_free(ea_eval_result *r);
double ea_eval_ppl_full(const ea_eval_result *r);
double ea_eval_ppl_compressed(const ea_eval_result *r);
double ea_eval_kl(const ea_eval_result *r);
double ea_eval_top1(const ea_eval_result *r);
ea_status ea_compressor_evaluate(ea_model *m, const ea_compressor *c, const int *ids, size_t n,
                                 const ea_eval_params *p, ea_eval_result *r);

typedef struct {
    char fingerprint[129]; char site[129]; int d; int K; double df; double *eigenvalues; double *ck;
} ea_esap_spectrum;
void ea_esap_spectrum_free(ea_esap_spectrum *s);
ea_status ea_esap_spectrum_save(const ea_esap_spectrum *s, const char *path);
ea_status ea_esap_spectrum_load(const char *path, ea_esap_spectrum *out);
typedef struct {
    int d_a, d_b, K; double df_a, df_b; double ck_pearson; double threshold; int converged;
    double a_vs_isotropic, b_vs_isotropic, a_vs_powerlaw, b_vs_powerlaw;
} ea_esap_handshake;
ea_status ea_esap_compare(const ea_esap_spectrum *a, const ea_esap_spectrum *b, int K, uint64_t seed,
                          ea_esap_handshake *out);
typedef struct ea_esap_basis ea_esap_basis;
ea_status ea_esap_basis_fit(const float *x, int n, int d, ea_esap_basis **out);
void ea_esap_basis_free(ea_esap_basis *b);
ea_status ea_esap_basis_project(const ea_esap_basis *b, const float *x, int n, int k, float *out);
typedef struct { int n; double p_at_1, p_at_10; double csls_p_at_1, csls_p_at_10; double mean_cos; } ea_esap_retrieval;
typedef struct {
    int rank, train_anchors, test_anchors; ea_esap_retrieval test; double train_cosine; ea_esap_retrieval null;
    double null_train_cosine; double chance_p_at_1;
} ea_esap_align_report;
ea_status ea_esap_align_eval(const float *za, const float *zb, int n, int k, int n_train, int n_test,
                             uint64_t seed, double *w, ea_esap_align_report *out);
typedef struct {
    int rank, train_anchors, test_anchors; size_t bytes_f32, bytes_f16; size_t bytes_full;
    double acc_f32, acc_f16; double acc_reduced_f32; double top10_f32; double null_acc_f32; double chance;
} ea_esap_message_report;
ea_status ea_esap_message_eval(const ea_esap_basis *basis_a, const float *a, const ea_esap_basis *basis_b,
                               const float *b, int n, int k, int n_train, int n_test, uint64_t seed,
                               ea_esap_message_report *out);
typedef enum { EA_ESAP_REPR_WTE = 0, EA_ESAP_REPR_HIDDEN = 1 } ea_esap_repr_kind;
typedef struct { ea_esap_repr_kind kind; int layer_a, layer_b; } ea_esap_repr;
ea_status ea_esap_repr_parse(const char *s, ea_esap_repr *out);
void ea_esap_repr_name(const ea_esap_repr *r, int side_b, const ea_model *m, char *buf, size_t size);
typedef struct { int n, d_a, d_b; int *id_a, *id_b; float *a, *b; } ea_esap_anchors;
void ea_esap_anchors_free(ea_esap_anchors *a);
typedef void (*ea_esap_progress_fn)(const char *label, size_t done, size_t total);
typedef struct {
    ea_esap_repr repr; const char *text_path; size_t max_tokens; int ctx; ea_esap_progress_fn progress;
} ea_esap_source;
ea_status ea_esap_anchors_from_models(ea_model *ma, const ea_tokenizer *ta, ea_model *mb, const ea_tokenizer *tb,
                                      const ea_esap_source *src, ea_esap_anchors *out);
ea_status ea_esap_spectrum_from_model(ea_model *m, const ea_tokenizer *t, int side_b, const ea_esap_source *src, int K,
                                      ea_esap_spectrum *out);
""")

_here = os.path.dirname(os.path.abspath(__file__))
_SONAME = "libeigenalign.so.0"


def _candidates():
    env = os.environ.get("EIGENALIGN_LIBRARY")
    if env:
        return [env]  # explicit: nothing else is tried
    out = [os.path.join(_here, n) for n in (_SONAME, "libeigenalign.so")]
    try:
        from . import _paths  # written by cmake --install
        out.append(_paths.LIBRARY)
    except ImportError:
        pass
    src = os.path.dirname(os.path.dirname(_here))  # python/eigenalign -> the source tree
    out.append(os.path.join(src, "build", _SONAME))
    out.append(_SONAME)  # the system's library path (ldconfig, LD_LIBRARY_PATH)
    found = ctypes.util.find_library("eigenalign")
    if found:
        out.append(found)
    return out


def _find_library():
    tried = []
    for c in _candidates():
        if os.sep in c and not os.path.exists(c):
            tried.append(c)
            continue
        return c, tried
    raise ImportError("eigenalign: libeigenalign.so not found (tried %s); build it (cmake --build build) "
                      "or set EIGENALIGN_LIBRARY" % ", ".join(tried + [_SONAME]))


def _loaded(name):
    try:
        with open("/proc/self/maps") as f:
            return name in f.read()
    except OSError:
        return False


_TUNE_VARS = ("OPENBLAS_CORETYPE", "GOMP_SPINCOUNT")
_PROBE = ("import ctypes, sys\n"
          "lib = ctypes.CDLL(sys.argv[1])\n"
          "lib.ea_process_tune_env()\n"
          "libc = ctypes.CDLL(None); libc.getenv.restype = ctypes.c_char_p\n"
          "for v in sys.argv[2:]:\n"
          "    x = libc.getenv(v.encode())\n"
          "    print(v + '=' + (x.decode() if x is not None else ''))\n")


def _tune(path):
    """Set what ea_process_tune_env would set, before this process loads OpenBLAS and libgomp.
    Returns {"applied": {...}, "skipped": reason or None}."""
    if os.environ.get("EA_NO_REEXEC"):
        return {"applied": {}, "skipped": "EA_NO_REEXEC is set"}
    if _loaded("libopenblas.so") or _loaded("libgomp.so"):
        return {"applied": {}, "skipped": "OpenBLAS or libgomp was already loaded in this process "
                                          "(import eigenalign first to get the tuning)"}
    unset = [v for v in _TUNE_VARS if v not in os.environ]
    if not unset or (unset == ["GOMP_SPINCOUNT"] and "OMP_WAIT_POLICY" in os.environ):
        return {"applied": {}, "skipped": None}
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE, path] + list(_TUNE_VARS), capture_output=True,
                           text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return {"applied": {}, "skipped": "probe failed: %s" % e}
    if r.returncode != 0:
        return {"applied": {}, "skipped": "probe failed: %s" % r.stderr.strip()[-300:]}
    applied = {}
    for line in r.stdout.splitlines():
        k, _, v = line.partition("=")
        if k in unset and v:
            os.environ[k] = v
            applied[k] = v
    return {"applied": applied, "skipped": None}


LIBRARY_PATH, _tried = _find_library()
TUNING = _tune(LIBRARY_PATH)
try:
    lib = ffi.dlopen(LIBRARY_PATH)
    libc = ffi.dlopen(None)
except OSError as e:
    raise ImportError("eigenalign: cannot load %s: %s" % (LIBRARY_PATH, e)) from e


class Error(Exception):
    """A libeigenalign failure: .status (the ea_status code), .status_name, and the library's
    message (naming the file and the values) as the exception text."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status
        self.status_name = ffi.string(lib.ea_status_name(status)).decode() if status is not None else None


class IOError_(Error, OSError):
    pass


class FormatError(Error, ValueError):
    pass


class NoMemoryError(Error, MemoryError):
    pass


class ArgumentError(Error, ValueError):
    pass


class UnsupportedError(Error, NotImplementedError):
    pass


class NumericError(Error, ArithmeticError):
    pass


class MismatchError(Error, ValueError):
    pass


_CLASSES = {-1: IOError_, -2: FormatError, -3: NoMemoryError, -4: ArgumentError, -5: UnsupportedError,
            -6: NumericError, -7: MismatchError}


def check(st):
    """Raise the exception for a non-zero ea_status, with ea_last_error() as its message."""
    if st != 0:
        msg = ffi.string(lib.ea_last_error()).decode("utf-8", "replace")
        raise _CLASSES.get(st, Error)(msg, st)


def take_string(ptr, n=None):
    """Copy a malloc'd char* the library returned and free it."""
    try:
        return ffi.string(ptr) if n is None else bytes(ffi.buffer(ptr, n))
    finally:
        libc.free(ptr)


class Callbacks:
    """Keeps a Python callable alive as a C callback for one call, and carries an exception it
    raised across the C frames: raise_pending() re-raises it once the call returned."""

    def __init__(self):
        self.error = None

    def progress(self, fn):
        """void (*)(void *user, size_t done, size_t total), or NULL when fn is None."""
        if fn is None:
            return ffi.NULL

        def cb(user, done, total):
            if self.error is None:
                try:
                    fn(int(done), int(total))
                except BaseException as e:  # reported after the call; the C side cannot stop here
                    self.error = e
        self._p = ffi.callback("void(void *, size_t, size_t)", cb)
        return self._p

    def raise_pending(self):
        if self.error is not None:
            e, self.error = self.error, None
            raise e


_esap_local = threading.local()


@ffi.callback("void(const char *, size_t, size_t)")
def esap_progress(label, done, total):
    fn = getattr(_esap_local, "fn", None)
    if fn is not None:
        try:
            fn(int(done), int(total))
        except BaseException as e:
            _esap_local.error = e


def esap_set_progress(fn):
    _esap_local.fn = fn
    _esap_local.error = None
    return esap_progress if fn is not None else ffi.NULL


def esap_raise_pending(reset=True):
    """Re-raise what the progress callback raised; reset: also forget the callback."""
    e = getattr(_esap_local, "error", None)
    _esap_local.error = None
    if reset:
        _esap_local.fn = None
    if e is not None:
        raise e
