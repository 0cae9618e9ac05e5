"""hessfree: distributed Hessian-free training of deep neural networks."""

__version__ = "0.1.0"
