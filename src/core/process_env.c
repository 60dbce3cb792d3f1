/* Process-level tuning for executables. Two runtime settings are read only once, when their
 * library loads, so an executable that wants them must set them and re-execute itself:
 * - OpenBLAS picks kernels from the CPU model; Debian 12's 0.3.21 does not know recent Xeons and
 *   falls back to its SSE3 "Prescott" kernels, half the speed of its AVX2 "Haswell" ones.
 * - libgomp spins idle threads for a long time by default; on a busy machine a descheduled
 *   spinner stalls every barrier for a scheduler quantum, and one-token decode (many short
 *   parallel regions) fell from ~2000 to 7 tokens/s. A short spin keeps the quiet-machine speed. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ea/core.h"

int ea_process_tune_env(void) {
    if (getenv("EA_NO_REEXEC")) return 0;
    int changed = 0;
    if (!getenv("OMP_WAIT_POLICY") && !getenv("GOMP_SPINCOUNT")) {
        setenv("GOMP_SPINCOUNT", "20000", 1);
        changed = 1;
    }
    const char *core = openblas_get_corename();
    if (!getenv("OPENBLAS_CORETYPE") && core && strcmp(core, "Prescott") == 0) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            setenv("OPENBLAS_CORETYPE", "Haswell", 1);
            changed = 1;
        }
    }
    return changed;
}

void ea_process_tune(char **argv) {
    if (!ea_process_tune_env()) return;
    setenv("EA_NO_REEXEC", "1", 1); /* never loop */
    execv("/proc/self/exe", argv);
    /* exec failed: carry on with the defaults */
}
