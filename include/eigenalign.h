/* eigen-alignment: measure the low-dimensional structure of transformer activations and use it
 * to shrink inference memory. One public header; every symbol is prefixed ea_. */
#ifndef EIGENALIGN_H
#define EIGENALIGN_H

#include "ea/core.h"
#include "ea/io.h"
#include "ea/tokenizer.h"
#include "ea/model.h"
#include "ea/kvcodec.h"
#include "ea/spectral.h"
#include "ea/calib.h"
#include "ea/compress.h"
#include "ea/esap.h"
#include "ea/report.h"

#endif
