/* Run-time instruction-set dispatch (private). The library is built for baseline x86-64; the AVX2
 * and AVX-512 kernels are compiled per function inside target regions and called only when the
 * tier chosen at run time (CPUID, or EA_ISA) has them, as ggml does. A kernel file:
 *
 *     EA_TARGET_AVX2_BEGIN            (every function up to the END is compiled for that tier)
 *     static void dot_avx2(...) { ... _mm256_fmadd_ps ... }
 *     EA_TARGET_END
 *     ...  fn = ea_isa_now() >= EA_ISA_AVX2 ? dot_avx2 : dot_generic;
 *
 * Include <immintrin.h> and other headers before a region, never inside it (clang would retarget
 * their declarations). A static inline body shared by several tiers may be defined outside the
 * regions and called from each: it is compiled (and vectorised) once per tier that inlines it. */
#ifndef EA_CORE_ISA_H
#define EA_CORE_ISA_H

#include "ea/core.h"

#if defined(__x86_64__) || defined(__i386__)
#define EA_X86 1
#include <immintrin.h>
#endif

#define EA_PRAGMA_(x) _Pragma(#x)
#if !defined(EA_X86)
#define EA_TARGET_BEGIN_(features)
#define EA_TARGET_END
#elif defined(__clang__)
#define EA_TARGET_BEGIN_(features) EA_PRAGMA_(clang attribute push(__attribute__((target(features))), apply_to = function))
#define EA_TARGET_END EA_PRAGMA_(clang attribute pop)
#else
#define EA_TARGET_BEGIN_(features) EA_PRAGMA_(GCC push_options) EA_PRAGMA_(GCC target(features))
#define EA_TARGET_END EA_PRAGMA_(GCC pop_options)
#endif
/* x86-64-v3's vector features; v4's AVX-512 subsets; and VBMI's byte permutes (klt kernel only) */
#define EA_TARGET_AVX2_BEGIN EA_TARGET_BEGIN_("avx,avx2,fma,f16c")
#define EA_TARGET_AVX512_BEGIN EA_TARGET_BEGIN_("avx,avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512cd")
#define EA_TARGET_AVX512VBMI_BEGIN \
    EA_TARGET_BEGIN_("avx,avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512cd,avx512vbmi")

/* The kernels' tier (never one the CPU lacks: with an invalid EA_ISA, generic). Cheap: one load
 * once resolved. */
extern int ea_isa_resolved_;
ea_isa ea_isa_resolve_(void);
static inline ea_isa ea_isa_now(void) {
    int t = __atomic_load_n(&ea_isa_resolved_, __ATOMIC_ACQUIRE);
    return t >= 0 ? (ea_isa)t : ea_isa_resolve_();
}
/* The CPU has AVX-512 VBMI (the klt decode kernel's byte permutes) and the tier allows AVX-512. */
int ea_isa_vbmi(void);

#endif
