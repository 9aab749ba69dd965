"""Run and sweep directories: their layout (spelled in layout.py only), atomic I/O, the lock, provenance."""
