"""The batch object the trainer hands a stub model (what ``MLP.batch`` returns, minimally)."""

import attrs
import numpy as np


@attrs.frozen
class Rows:
    X: np.ndarray
    labels: np.ndarray
    targets = None

    @property
    def n(self) -> int:
        return self.X.shape[0]
