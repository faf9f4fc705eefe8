"""osteo_tf: reproducible osteoporosis-from-radiograph studies with Keras and TensorFlow.

The package holds every piece of logic; the notebooks in ``notebooks/`` only call it.
Modules are imported lazily so that ``import osteo_tf`` stays cheap (no TensorFlow import).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
