/* placeholder: the compressor module (issue 4) defines this API. */
#ifndef EA_COMPRESS_H
#define EA_COMPRESS_H
#endif
