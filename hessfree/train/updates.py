"""The first-order update rules as fused kernels: two passes over θ-sized memory per update.

With numpy an update reads and writes the θ-sized vectors several times: the mean
gradient g = Σ∇ℓ/b into a new array, g + wd·θ into another, the finiteness test into a
boolean array, then for momentum SGD v ← μ·v, η·g into a temporary, v − η·g and θ + v,
each a pass of its own (Adam more). Every data-parallel rank repeats all of it on the
whole vector, so at 16 thread ranks on 2 cores these passes weigh as much as the
gradients' GEMMs. Here an update takes two passes:

* :func:`mean_gradient_into` forms g (with the coupled weight-decay term) in a vector
  the trainer keeps and counts its elements that are NaN or ±inf: the skip test,
  decided before θ or a moment is written;
* :func:`step` applies SGD, momentum SGD, Adam or AdamW.

Bitwise numpy's results: the kernels evaluate exactly the expressions of the numpy
formulation (``reference_step``, which the tests compare them with), in the same order
and precision. Every scalar is first cast to the arrays' dtype, as numpy does with a
Python float (NEP 50), and each product and sum is rounded on its own (no ``fastmath``,
so no fused multiply-add). The kernels are serial (rank threads call them at once).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from hessfree.errors import InputError
from hessfree.methods import Update
from hessfree.models.kernels import JIT

# Each loop below is branch-free, so LLVM vectorises it. One loop that tested the rule
# and the decay per element stayed scalar: 0.34 ms per momentum update of 318,010
# float32 values, more than numpy's 0.29 ms; the two passes here take about 0.1 ms
# (serial profiles). Σ∇ℓ/b stays a division, as in numpy: multiplying by 1/b rounds
# differently.


@numba.njit(**JIT)
def _mean_gradient_into(grad_sum, count, theta, wd, coupled, g):
    """g ← Σ∇ℓ/b (+ wd·θ) in one vectorised pass; returns how many elements of g are NaN
    or ±inf. (g may be Σ∇ℓ itself, with the same bits, but LLVM then cannot vectorise.)"""
    bad = 0
    if coupled:
        for i in range(g.size):
            x = grad_sum[i] / count + wd * theta[i]
            g[i] = x
            bad += not math.isfinite(x)
    else:
        for i in range(g.size):
            x = grad_sum[i] / count
            g[i] = x
            bad += not math.isfinite(x)
    return bad


@numba.njit(**JIT)
def _sgd(theta, g, lr):
    for i in range(theta.size):
        theta[i] = theta[i] - lr * g[i]


@numba.njit(**JIT)
def _momentum(theta, velocity, g, lr, mu):
    for i in range(theta.size):
        v = velocity[i] * mu
        v = v - lr * g[i]
        velocity[i] = v
        theta[i] = theta[i] + v


@numba.njit(**JIT)
def _adam(theta, m, v, g, lr, b1, b2, b1c, b2c, decay, bias1, bias2, eps):
    for i in range(theta.size):
        gi = g[i]
        mi = m[i] * b1
        mi = mi + b1c * gi
        m[i] = mi
        vi = v[i] * b2
        vi = vi + b2c * (gi * gi)
        v[i] = vi
        s = np.sqrt(vi / bias2)
        s = s + eps
        u = mi / bias1
        u = u / s
        u = u * lr
        theta[i] = theta[i] * decay - u


def _fusable(*arrays) -> bool:
    first = arrays[0]
    return first.dtype.kind == "f" and all(
        a is None or (a.ndim == 1 and a.dtype == first.dtype and a.size == first.size and a.flags.c_contiguous) for a in arrays
    )


def mean_gradient(grad_sum: np.ndarray, count: int, theta: np.ndarray, coupled_decay: float) -> np.ndarray:
    """g = Σ∇ℓ/``count`` (+ ``coupled_decay``·θ), a new array (numpy's expressions)."""
    g = grad_sum / count
    if coupled_decay:
        g = g + coupled_decay * theta
    return g


def mean_gradient_into(grad_sum: np.ndarray, count: int, theta: np.ndarray, coupled_decay: float, out: np.ndarray) -> int:
    """:func:`mean_gradient` written into ``out`` (bitwise the same); returns how many of
    its elements are NaN or ±inf (the skip test). ``out`` may be ``grad_sum``, about 6×
    slower (the loop is then not vectorised)."""
    if not _fusable(out, grad_sum, theta):
        out[:] = mean_gradient(grad_sum, count, theta, coupled_decay)
        return int(np.count_nonzero(~np.isfinite(out)))
    dt = out.dtype.type
    return int(_mean_gradient_into(grad_sum, dt(count), theta, dt(coupled_decay), bool(coupled_decay), out))


def step(rule: Update, theta, velocity, second_moment, g, *, lr: float, momentum: float = 0.0, decoupled_decay: float = 0.0,
         beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, t: int = 1) -> None:
    """:func:`reference_step` (bitwise) in one pass over the vectors."""
    if rule in (Update.ADAM, Update.ADAMW) and second_moment is None:
        raise InputError(f"second_moment: {rule.value} needs Adam's second moment v, found None")
    kw = dict(lr=lr, momentum=momentum, decoupled_decay=decoupled_decay, beta1=beta1, beta2=beta2, eps=eps, t=t)
    if not _fusable(theta, velocity, second_moment, g):
        reference_step(rule, theta, velocity, second_moment, g, **kw)
        return
    dt = theta.dtype.type
    if rule in (Update.ADAM, Update.ADAMW):
        _adam(theta, velocity, second_moment, g, dt(lr), dt(beta1), dt(beta2), dt(1.0 - beta1), dt(1.0 - beta2),
              dt(1.0 - lr * decoupled_decay), dt(1.0 - beta1**t), dt(1.0 - beta2**t), dt(eps))
    elif momentum:
        _momentum(theta, velocity, g, dt(lr), dt(momentum))
    else:
        _sgd(theta, g, dt(lr))


def reference_step(rule: Update, theta, velocity, second_moment, g, *, lr: float, momentum: float = 0.0,
                   decoupled_decay: float = 0.0, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                   t: int = 1) -> None:
    """The update in numpy, from the mean gradient g (what :func:`step` computes, bitwise):

    SGD θ ← θ − η·g; MSGD v ← μ·v − η·g, θ ← θ + v; Adam m ← β₁·m + (1−β₁)·g,
    v ← β₂·v + (1−β₂)·g², θ ← θ·(1 − η·wd) − η·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)
    (AdamW's decoupled decay wd; 0 for Adam, whose decay is in g).
    """
    if rule in (Update.ADAM, Update.ADAMW):
        m, v = velocity, second_moment
        m *= beta1
        m += (1.0 - beta1) * g
        v *= beta2
        v += (1.0 - beta2) * (g * g)
        if decoupled_decay:
            theta *= 1.0 - lr * decoupled_decay
        denom = v / (1.0 - beta2**t)  # v̂
        np.sqrt(denom, out=denom)
        denom += eps
        u = m / (1.0 - beta1**t)  # m̂
        u /= denom
        u *= lr
        theta -= u
    elif momentum:
        velocity *= momentum
        velocity -= lr * g
        theta += velocity
    else:
        theta -= lr * g


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels for float32 and float64."""
    for dtype in (np.float32, np.float64):
        x = np.ones(2, dtype=dtype)
        for decay in (0.0, 0.5):
            mean_gradient_into(x, 2, x, decay, np.empty_like(x))
        for rule, mu in ((Update.SGD, 0.0), (Update.MOMENTUM, 0.9), (Update.ADAM, 0.0)):
            step(rule, x.copy(), x.copy(), x.copy(), x, lr=0.1, momentum=mu)
