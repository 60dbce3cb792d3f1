/* The row codecs' attend op over the attention kernels of src/attend (attend/attend.h: row
 * formats, decode kernel, sgemm prefill). */
#ifndef EA_KV_ROWS_H
#define EA_KV_ROWS_H

#include <stddef.h>

#include "attend/attend.h"
#include "kv/kv_codec.h"

/* The attend op of a codec whose rows are in format fmt, for any nq: the streaming kernel for
 * nq <= EA_KV_ROWS_STREAM_MAX, else the rows decoded with the codec's decode op and the sgemm
 * prefill (the streaming kernel four queries at a time if that memory cannot be had). */
void ea_kv_rows_codec_attend(const ea_kv_codec *c, ea_kv_rows_format fmt, int layer, const float *q, int nq, int pos0,
                             const void *kbuf, const void *vbuf, float *out);

#endif
