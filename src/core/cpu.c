/* Which kernel tier runs: the best the CPU (and the OS, which must save the wider registers)
 * supports, read once from CPUID/XGETBV, unless EA_ISA names one. A tier the CPU lacks is refused:
 * the kernels then run generic (never an instruction the CPU lacks) and ea_isa_tier reports the
 * error, which entry points (model load, codec creation) and the CLI pass on. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "core/isa.h"

int ea_isa_resolved_ = -1;

static struct {
    ea_isa best, tier;
    int vbmi;
    ea_status err;
    char msg[256];
} cpu;
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;

const char *ea_isa_name(ea_isa tier) {
    switch (tier) {
    case EA_ISA_GENERIC: return "generic";
    case EA_ISA_AVX2: return "avx2";
    case EA_ISA_AVX512: return "avx512";
    }
    return "unknown";
}

static void detect(void) {
    cpu.best = EA_ISA_GENERIC;
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    int fma = c >> 12 & 1, osxsave = c >> 27 & 1, avx = c >> 28 & 1, f16c = c >> 29 & 1;
    if (!osxsave || !avx) return;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    (void)xhi;
    if ((xlo & 0x6) != 0x6) return; /* the OS does not save YMM state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return;
    int avx2 = b >> 5 & 1;
    if (!(avx2 && fma && f16c)) return;
    cpu.best = EA_ISA_AVX2;
    int f = b >> 16 & 1, dq = b >> 17 & 1, cd = b >> 28 & 1, bw = b >> 30 & 1, vl = b >> 31 & 1;
    if (f && dq && cd && bw && vl && (xlo & 0xe6) == 0xe6) { /* and the OS saves opmask and ZMM state */
        cpu.best = EA_ISA_AVX512;
        cpu.vbmi = c >> 1 & 1;
    }
#endif
}

static void resolve(void) {
    detect();
    cpu.tier = cpu.best;
    const char *want = getenv("EA_ISA");
    if (want && *want) {
        ea_isa t;
        if (!strcmp(want, "generic")) t = EA_ISA_GENERIC;
        else if (!strcmp(want, "avx2")) t = EA_ISA_AVX2;
        else if (!strcmp(want, "avx512")) t = EA_ISA_AVX512;
        else {
            cpu.err = EA_ERR_ARG;
            snprintf(cpu.msg, sizeof cpu.msg, "EA_ISA=%s: unknown kernel tier (expected generic, avx2 or avx512)", want);
            t = EA_ISA_GENERIC;
        }
        if (!cpu.err && t > cpu.best) {
            cpu.err = EA_ERR_UNSUPPORTED;
            snprintf(cpu.msg, sizeof cpu.msg, "EA_ISA=%s: this CPU does not support the %s kernels (best tier: %s)", want,
                     want, ea_isa_name(cpu.best));
            t = EA_ISA_GENERIC;
        }
        cpu.tier = t;
    }
    if (cpu.tier < EA_ISA_AVX512) cpu.vbmi = 0;
    __atomic_store_n(&ea_isa_resolved_, (int)cpu.tier, __ATOMIC_RELEASE);
}

ea_isa ea_isa_resolve_(void) {
    pthread_once(&cpu_once, resolve);
    return cpu.tier;
}

int ea_isa_vbmi(void) {
    ea_isa_resolve_();
    return cpu.vbmi;
}

ea_status ea_isa_tier(ea_isa *tier) {
    pthread_once(&cpu_once, resolve);
    if (tier) *tier = cpu.tier;
    return cpu.err ? ea_error(cpu.err, "%s", cpu.msg) : EA_OK;
}
