"""hessfree: distributed Hessian-free training of deep neural networks.

``hessfree.load_model(path)`` reads a model file written by ``hessfree train --save-model``
(or ``hessfree.save_model``); see :mod:`hessfree.modelfile`. Training is in
:mod:`hessfree.train`, data in :mod:`hessfree.data`, networks in :mod:`hessfree.models`.
"""

__version__ = "0.1.0"

#: names served lazily from hessfree.modelfile (importing it loads numba's kernels)
_MODELFILE = ("load_model", "save_model", "TrainedModel", "ModelFileError", "Evaluation")

__all__ = ["Evaluation", "ModelFileError", "TrainedModel", "__version__", "load_model", "save_model"]


def __getattr__(name: str):
    if name in _MODELFILE:
        from hessfree import modelfile

        return getattr(modelfile, name)
    raise AttributeError(f"module 'hessfree' has no attribute {name!r}")
