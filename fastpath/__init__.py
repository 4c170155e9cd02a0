"""numba-compiled batch data plane: no I/O, no trio, only numpy arrays in and out."""
