"""Datasets: the embedded digits, and the validated form every dataset takes."""

from hessfree.data.dataset import Dataset
from hessfree.data.digits import load_digits

__all__ = ["Dataset", "load_digits"]
