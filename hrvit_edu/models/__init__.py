"""One module per paper; each registers its variants with :mod:`hrvit_edu.registry`."""
