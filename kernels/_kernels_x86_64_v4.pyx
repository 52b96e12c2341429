# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# The x86_64_v4 build of the compiled kernels; setup.py chooses its -march flags.
include "_kernels.pxi"
