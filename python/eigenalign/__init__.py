"""eigenalign: Python binding of libeigenalign (cffi, ABI mode). The API lands in the next commits."""
