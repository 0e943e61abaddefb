"""Training: the loop (loop.py) and what it is built from, one module per part."""
