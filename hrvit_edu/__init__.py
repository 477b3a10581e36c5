"""hrvit-edu: a notebook-driven textbook package on efficient vision backbones for dense prediction.

The face of the package is small: :func:`create_model` and :func:`list_models` (one registry
for every model in the book).  Everything else lives in its own module: ``data``, ``train``,
``bench``, ``kernels``, ``models``, ``nn``, ``profiles``, ``notebook``.
"""
from .registry import create_model, list_models, model_info, register_model

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "model_info", "register_model", "__version__"]
