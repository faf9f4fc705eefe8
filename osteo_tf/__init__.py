"""osteo_tf: reproducible osteoporosis-from-radiograph studies with Keras and TensorFlow.

The package holds every piece of logic; the notebooks in ``notebooks/`` only call it.
Modules are imported lazily so that ``import osteo_tf`` stays cheap (no TensorFlow import);
``osteo_tf.predict`` (``osteo_tf.inference.predict``: a saved model bundle's probabilities and
decisions for images, as a DataFrame) imports TensorFlow on its first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "predict"]


def __getattr__(name: str):
    if name == "predict":
        from osteo_tf.inference import predict

        return predict
    raise AttributeError(f"module 'osteo_tf' has no attribute {name!r}")
