/* OpenBLAS picks its kernels once, when it is loaded, from the CPU model. Debian 12's 0.3.21 does
 * not know recent Xeons and falls back to its SSE3 "Prescott" kernels, half the speed of its AVX2
 * "Haswell" ones on the same machine. OPENBLAS_CORETYPE is only read at load time, so an
 * executable that wants the faster kernels must set it and re-execute itself. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ea/core.h"

void ea_blas_select_kernel(char **argv) {
    if (getenv("OPENBLAS_CORETYPE") || getenv("EA_NO_BLAS_REEXEC")) return;
    const char *core = openblas_get_corename();
    if (!core || strcmp(core, "Prescott") != 0) return;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return;
    setenv("OPENBLAS_CORETYPE", "Haswell", 1);
    setenv("EA_NO_BLAS_REEXEC", "1", 1); /* never loop */
    execv("/proc/self/exe", argv);
    /* exec failed: carry on with the detected kernels */
}
