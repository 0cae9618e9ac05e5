"""Every numba kernel of the dense model, in one module.

GEMMs are left to BLAS (numpy ``matmul`` into preallocated buffers); these kernels fuse
the elementwise work around them into single passes over memory:

* the backward factor f'(z) (and the Hessian's f''(z) term), always expressed through
  the *activation value* a = f(z), so the forward cache keeps only activations;
* softmax / logistic / squared loss with its gradient δ = ∂ℓ/∂z and the bias gradient
  (column sum of δ) in one pass, and the output-Hessian product H_L·u.

Derivatives through the activation value a = f(z):

=========  ==================  ============  =========================
activation f(z)                f'(z)         h(a) = f''(z) / f'(z)
=========  ==================  ============  =========================
tanh       tanh z              1 − a²        −2a
sigmoid    1 / (1 + e^−z)      a(1 − a)      1 − 2a
relu       max(z, 0)           [a > 0]       0
softplus   log(1 + e^z)        1 − e^−a      e^−a  (= 1 − f')
linear     z                   1             0
=========  ==================  ============  =========================

Each hidden layer has its own activation code (a model may mix them, e.g. a deep
autoencoder's linear code layer between sigmoid layers); every kernel takes the code of
the one layer it works on.

The forward activation itself is *not* a numba kernel: numba calls the scalar libm
``tanh``/``exp`` per element, while numpy's ufuncs use SIMD implementations — measured
here, 20M float64 ``tanh`` take 0.35 s in a numba loop and 0.036 s with ``np.tanh`` (the
GEMM producing them takes 0.33 s). ``activate`` below applies bias and activation with
in-place ufuncs instead.

Compilation options are decided here, once (``JIT``): ``nogil`` so that rank threads run
kernels concurrently, ``cache`` so later processes skip compilation, no ``fastmath`` so
results match the float64 references to rounding. Every kernel is compiled twice from
the same source, into :data:`SERIAL` and :data:`PARALLEL` (``parallel=True``, rows spread
over numba's threads). Use ``PARALLEL`` only where one thread per process launches
kernels: numba's default threading layer aborts when parallel kernels are launched from
several threads (``ThreadComm``). Column sums are accumulated per fixed block of
``BLOCK`` rows and the blocks added in order, so both variants give bitwise the same
answer, whatever the thread count. A model with ``parallel=True`` uses :data:`BY_SIZE`:
the parallel kernel for large arrays, the serial one for small arrays.
"""

from __future__ import annotations

import math
import os
from types import FunctionType, SimpleNamespace

import numba
import numpy as np
from numba import prange

JIT = dict(nogil=True, cache=True, fastmath=False, error_model="numpy")

# numba's OpenMP threading layer (GNU libgomp) otherwise spin-waits after every parallel
# kernel and steals the cores OpenBLAS's threads need for the next GEMM: measured here
# with 2 threads, products took 1.3–1.6× their GEMM floor, and 1.07–1.14× with passive
# waiting. libgomp reads this when it is loaded (at the first parallel kernel); a value
# the user set already is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
#: rows per block of a column-sum reduction (fixed: results must not depend on threads)
BLOCK = 64

# activation codes (kept in step with hessfree.models.mlp.Activation)
TANH, SIGMOID, RELU, SOFTPLUS, LINEAR = 0, 1, 2, 3, 4
# loss codes (kept in step with hessfree.models.mlp.Loss)
SOFTMAX_CE, LOGISTIC_CE, SQUARED = 0, 1, 2


def activate(Z: np.ndarray, b: np.ndarray, code: int) -> None:
    """Z ← f(Z + b) in place with numpy's SIMD ufuncs (Z is the GEMM output a_{l−1}·W_l)."""
    np.add(Z, b, out=Z)
    if code == TANH:
        np.tanh(Z, out=Z)
    elif code == SIGMOID:  # 1 / (1 + e^−z); e^−z overflows to inf for z ≪ 0, giving exactly 0
        np.negative(Z, out=Z)
        np.exp(Z, out=Z)
        np.add(Z, 1.0, out=Z)
        np.reciprocal(Z, out=Z)
    elif code == RELU:
        np.maximum(Z, 0.0, out=Z)
    elif code == SOFTPLUS:  # log(1 + e^z), stable for any z
        np.logaddexp(Z, 0.0, out=Z)
    # LINEAR: the identity, nothing more to do


@numba.njit(inline="always", **JIT)
def _n_blocks(n):
    return (n + BLOCK - 1) // BLOCK


@numba.njit(**JIT)
def _sum_blocks(part, colsum):
    """colsum[j] ← Σ_blocks part[blk, j], blocks added in order (deterministic)."""
    for j in range(colsum.size):
        colsum[j] = 0.0
    for blk in range(part.shape[0]):
        for j in range(colsum.size):
            colsum[j] += part[blk, j]


@numba.njit(inline="always", **JIT)
def _dact(code, a, one):
    """f'(z) as a function of a = f(z); ``one`` is 1 in the array's dtype (a float literal
    would turn float32 arithmetic into float64 and halve the vector width)."""
    if code == TANH:
        return one - a * a
    if code == SIGMOID:
        return a * (one - a)
    if code == RELU:
        return one if a > 0 else one - one
    if code == LINEAR:
        return one
    return -math.expm1(-a)


@numba.njit(inline="always", **JIT)
def _curv_ratio(code, a, one):
    """h(a) = f''(z) / f'(z) as a function of a = f(z) (0 where f'' = 0)."""
    if code == TANH:
        return -(a + a)
    if code == SIGMOID:
        return one - (a + a)
    if code == RELU or code == LINEAR:
        return one - one
    return math.exp(-a)


# The kernels below take the activation code as an argument, but their inner loops must
# not test it: a branch on ``code`` (or ``has2``) inside the loop over a row keeps LLVM
# from vectorizing it (measured: 3.7 ms against 0.8 ms for one 8192×400 float32 tanh
# backprop, 19 ms against 1 ms for relu). So each kernel's row work is an inlined helper
# whose code is a constant at its call site: the kernel picks the specialized copy once
# per block of rows (or per row). Same arithmetic in the same order, so the same bits.


@numba.njit(inline="always", **JIT)
def _backprop_rows(G, A, part, lo, hi, code, one):
    for i in range(lo, hi):
        for j in range(G.shape[1]):
            d = G[i, j] * _dact(code, A[i, j], one)
            G[i, j] = d
            part[j] += d


def backprop_activation(G, A, code, colsum):
    """δ = G ⊙ f'(z) in place over G; colsum ← Σ_rows δ (the bias gradient).

    G is E = δ_{l+1}·W_{l+1}ᵀ, A the layer's activation a = f(z).
    """
    one = G.dtype.type(1.0)
    n, m = G.shape
    nb = _n_blocks(n)
    part = np.zeros((nb, m), dtype=colsum.dtype)
    for blk in prange(nb):
        lo, hi, p = blk * BLOCK, min(n, (blk + 1) * BLOCK), part[blk]
        if code == TANH:
            _backprop_rows(G, A, p, lo, hi, TANH, one)
        elif code == SIGMOID:
            _backprop_rows(G, A, p, lo, hi, SIGMOID, one)
        elif code == RELU:
            _backprop_rows(G, A, p, lo, hi, RELU, one)
        elif code == SOFTPLUS:
            _backprop_rows(G, A, p, lo, hi, SOFTPLUS, one)
        else:
            _backprop_rows(G, A, p, lo, hi, LINEAR, one)
    _sum_blocks(part, colsum)


@numba.njit(inline="always", **JIT)
def _r_activation_row(P1, P2, has2, vb, A, RA, i, code, one):
    if has2:
        for j in range(P1.shape[1]):
            rz = P1[i, j] + vb[j] + P2[i, j]
            P1[i, j] = rz
            RA[i, j] = _dact(code, A[i, j], one) * rz
    else:
        for j in range(P1.shape[1]):
            rz = P1[i, j] + vb[j]
            P1[i, j] = rz
            RA[i, j] = _dact(code, A[i, j], one) * rz


def r_activation(P1, P2, has2, vb, A, code, RA):
    """R-forward through a hidden layer.

    R(z_l) = R(a_{l−1})·W_l + a_{l−1}·V_l + v_b: P1 and P2 hold the two GEMM products
    (P2 is absent, ``has2`` False, in the first layer where R(a_0) = 0). Writes
    R(z_l) over P1 and R(a_l) = f'(z_l) ⊙ R(z_l) into RA.
    """
    one = P1.dtype.type(1.0)
    for i in prange(P1.shape[0]):
        if code == TANH:
            _r_activation_row(P1, P2, has2, vb, A, RA, i, TANH, one)
        elif code == SIGMOID:
            _r_activation_row(P1, P2, has2, vb, A, RA, i, SIGMOID, one)
        elif code == RELU:
            _r_activation_row(P1, P2, has2, vb, A, RA, i, RELU, one)
        elif code == SOFTPLUS:
            _r_activation_row(P1, P2, has2, vb, A, RA, i, SOFTPLUS, one)
        else:
            _r_activation_row(P1, P2, has2, vb, A, RA, i, LINEAR, one)


def r_output(P1, P2, has2, vb):
    """R(z_L) = P1 + P2 + v_b over P1, for the linear output layer."""
    n, m = P1.shape
    for i in prange(n):
        if has2:
            for j in range(m):
                P1[i, j] = P1[i, j] + vb[j] + P2[i, j]
        else:
            for j in range(m):
                P1[i, j] = P1[i, j] + vb[j]


@numba.njit(inline="always", **JIT)
def _r_backprop_rows(G1, G2, D, A, RZ, part, lo, hi, code, one):
    for i in range(lo, hi):
        for j in range(G1.shape[1]):
            a = A[i, j]
            r = (G1[i, j] + G2[i, j]) * _dact(code, a, one) + D[i, j] * _curv_ratio(code, a, one) * RZ[i, j]
            G1[i, j] = r
            part[j] += r


def r_backprop_activation(G1, G2, D, A, RZ, code, colsum):
    """R-backward through a hidden layer of the exact Hessian (Pearlmutter).

    With E = δ_{l+1}·W_{l+1}ᵀ and δ_l = E ⊙ f'(z_l):
        R(δ_l) = (R(δ_{l+1})·W_{l+1}ᵀ + δ_{l+1}·V_{l+1}ᵀ) ⊙ f'(z_l) + E ⊙ f''(z_l) ⊙ R(z_l)
               = (G1 + G2) ⊙ f'(z_l) + δ_l ⊙ h(a_l) ⊙ R(z_l)
    written over G1, with colsum ← Σ_rows R(δ_l). D is δ_l, A is a_l, RZ is R(z_l).
    """
    one = G1.dtype.type(1.0)
    n, m = G1.shape
    nb = _n_blocks(n)
    part = np.zeros((nb, m), dtype=colsum.dtype)
    for blk in prange(nb):
        lo, hi, p = blk * BLOCK, min(n, (blk + 1) * BLOCK), part[blk]
        if code == TANH:
            _r_backprop_rows(G1, G2, D, A, RZ, p, lo, hi, TANH, one)
        elif code == SIGMOID:
            _r_backprop_rows(G1, G2, D, A, RZ, p, lo, hi, SIGMOID, one)
        elif code == RELU:
            _r_backprop_rows(G1, G2, D, A, RZ, p, lo, hi, RELU, one)
        elif code == SOFTPLUS:
            _r_backprop_rows(G1, G2, D, A, RZ, p, lo, hi, SOFTPLUS, one)
        else:
            _r_backprop_rows(G1, G2, D, A, RZ, p, lo, hi, LINEAR, one)
    _sum_blocks(part, colsum)


def add_into(out, x):
    """out ← out + x, elementwise over same-shape arrays of any rank (flattened)."""
    o = out.reshape(-1)
    v = x.reshape(-1)
    for k in prange(o.size):
        o[k] += v[k]


@numba.njit(inline="always", **JIT)
def _target(labels, targets, dense, i, j):
    if dense:
        return targets[i, j]
    return 1.0 if labels[i] == j else 0.0


def loss_forward(Z, labels, targets, dense, code, want_delta, D, colsum, scale):
    """Loss sum of the batch; optionally δ = ∂ℓ/∂z into D and Σ_rows δ into colsum.

    Z holds the output pre-activations z and is overwritten by the state the output
    Hessian needs: softmax probabilities p (softmax CE), sigmoid σ(z) (logistic CE), or
    z itself (squared error). ``scale[i]`` receives Σ_j t_ij (softmax CE), the factor of
    its Hessian diag(p) − ppᵀ. Targets t come from integer ``labels`` (one-hot) or from
    the dense ``targets`` array when ``dense``.

    * softmax CE: ℓ = Σ_j t_j (logΣ e^z − z_j), δ = (Σt)·p − t
    * logistic CE: ℓ = Σ_j softplus(z_j) − t_j z_j, δ = σ(z) − t
    * squared error: ℓ = ½ Σ_j (z_j − t_j)², δ = z − t
    """
    n, m = Z.shape
    nb = _n_blocks(n)
    part = np.zeros((nb, max(m, colsum.size)), dtype=Z.dtype)
    totals = np.zeros(nb)
    for blk in prange(nb):
        for i in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
            totals[blk] += _loss_row(Z, labels, targets, dense, code, want_delta, D, part[blk], scale, i)
    if want_delta:
        _sum_blocks(part, colsum)
    total = 0.0
    for blk in range(nb):
        total += totals[blk]
    return total


@numba.njit(inline="always", **JIT)
def _loss_row(Z, labels, targets, dense, code, want_delta, D, colsum, scale, i):
    """One row of ``loss_forward``: returns ℓᵢ, overwrites Z[i], adds δᵢ into colsum."""
    m = Z.shape[1]
    total = 0.0
    if code == SOFTMAX_CE:
        zmax = Z[i, 0]
        for j in range(1, m):
            if Z[i, j] > zmax:
                zmax = Z[i, j]
        s = 0.0
        for j in range(m):
            s += math.exp(Z[i, j] - zmax)
        logsum = zmax + math.log(s)
        tsum = 0.0
        for j in range(m):
            t = _target(labels, targets, dense, i, j)
            tsum += t
            if t != 0.0:
                total += t * (logsum - Z[i, j])
        scale[i] = tsum
        for j in range(m):
            Z[i, j] = math.exp(Z[i, j] - logsum)
        if want_delta:
            for j in range(m):
                d = tsum * Z[i, j] - _target(labels, targets, dense, i, j)
                D[i, j] = d
                colsum[j] += d
    elif code == LOGISTIC_CE:
        for j in range(m):
            z = Z[i, j]
            t = _target(labels, targets, dense, i, j)
            # one exponential serves the loss and σ(z): e^−|z| is e^−z for z ≥ 0 and e^z below
            # (the same argument bit for bit, so the same values as two separate calls)
            e = math.exp(-abs(z))
            total += max(z, 0.0) + math.log1p(e) - t * z
            if z >= 0:
                p = 1.0 / (1.0 + e)
            else:
                p = e / (1.0 + e)
            Z[i, j] = p
            if want_delta:
                d = p - t
                D[i, j] = d
                colsum[j] += d
    else:
        for j in range(m):
            d = Z[i, j] - _target(labels, targets, dense, i, j)
            total += 0.5 * d * d
            if want_delta:
                D[i, j] = d
                colsum[j] += d
    return total


def loss_hessian_product(P, U, scale, code, out, colsum):
    """out ← H_L·u per row (the loss's Hessian in z times u); colsum ← Σ_rows out.

    P is the output state written by ``loss_forward``.
    * softmax CE: H = (Σt)(diag p − ppᵀ), so Hu = (Σt)·(p ⊙ u − p·(pᵀu))
    * logistic CE: H = diag(σ(1 − σ))
    * squared error: H = I
    out may be U itself.
    """
    n, m = U.shape
    nb = _n_blocks(n)
    part = np.zeros((nb, m), dtype=colsum.dtype)
    for blk in prange(nb):
        for i in range(blk * BLOCK, min(n, (blk + 1) * BLOCK)):
            if code == SOFTMAX_CE:
                pu = 0.0
                for j in range(m):
                    pu += P[i, j] * U[i, j]
                s = scale[i]
                for j in range(m):
                    r = s * P[i, j] * (U[i, j] - pu)
                    out[i, j] = r
                    part[blk, j] += r
            elif code == LOGISTIC_CE:
                for j in range(m):
                    p = P[i, j]
                    r = p * (1.0 - p) * U[i, j]
                    out[i, j] = r
                    part[blk, j] += r
            else:
                for j in range(m):
                    r = U[i, j]
                    out[i, j] = r
                    part[blk, j] += r
    _sum_blocks(part, colsum)


def count_errors(P, labels):
    """Number of rows whose arg-max differs from the label (first maximum wins)."""
    n, m = P.shape
    wrong = 0
    for i in prange(n):  # an integer sum: the same in any order
        best = 0
        for j in range(1, m):
            if P[i, j] > P[i, best]:
                best = j
        if best != labels[i]:
            wrong += 1
    return wrong


@numba.njit(**JIT)
def all_finite(X):
    """True when no element of X (any shape) is NaN or ±inf (validation: serial, early exit)."""
    flat = X.reshape(-1)
    for k in range(flat.size):
        if not math.isfinite(flat[k]):
            return False
    return True


_KERNELS = (
    backprop_activation,
    r_activation,
    r_output,
    r_backprop_activation,
    add_into,
    loss_forward,
    loss_hessian_product,
    count_errors,
)

#: the suffix of the name under which a kernel's parallel variant is compiled and cached
PARALLEL_SUFFIX = "__parallel"


def _renamed(f: FunctionType, suffix: str) -> FunctionType:
    """A copy of ``f`` (same code, globals and defaults) whose qualified name ends in ``suffix``.

    numba's disk cache files a function's machine code under its module, qualified name
    and first line, and indexes it by signature and CPU only, not by compile options such
    as ``parallel`` (numba issue #6845). Compiled from the same function, the serial and
    the parallel variant of a kernel would share one cache entry, and whichever was saved
    first would be loaded for both: "serial" kernels that launch numba's threads (which
    may abort when several rank threads launch them at once, and cost a thread wake-up of
    ~0.15 ms per call on small arrays), or "parallel" kernels that run on one thread. The
    parallel variant is therefore compiled from a copy with a name of its own.
    """
    g = FunctionType(f.__code__, f.__globals__, f.__name__ + suffix, f.__defaults__, f.__closure__)
    g.__qualname__ = f.__qualname__ + suffix
    g.__doc__, g.__module__ = f.__doc__, f.__module__
    return g


#: every kernel compiled for one thread (safe to call from several threads at once)
SERIAL = SimpleNamespace(**{f.__name__: numba.njit(**JIT)(f) for f in _KERNELS})
#: every kernel with its row loop spread over numba's threads (one launching thread only);
#: attribute names as in SERIAL, cached apart from it (see ``_renamed``)
PARALLEL = SimpleNamespace(**{f.__name__: numba.njit(parallel=True, **JIT)(_renamed(f, PARALLEL_SUFFIX)) for f in _KERNELS})

#: below this many elements a kernel runs serially even in the parallel set: waking the
#: (passively waiting) OpenMP threads costs more than the work (digits' 1000×100 arrays
#: made training 10× slower on a busy machine)
PARALLEL_MIN_ELEMENTS = 1 << 18


def _by_size(serial, parallel):
    def call(first, *args):
        return (parallel if first.size >= PARALLEL_MIN_ELEMENTS else serial)(first, *args)

    call.__name__ = serial.__name__
    return call


#: the parallel set where the first array argument is large, the serial one elsewhere
#: (both give bitwise the same results, so mixing them changes nothing but speed)
BY_SIZE = SimpleNamespace(**{f.__name__: _by_size(getattr(SERIAL, f.__name__), getattr(PARALLEL, f.__name__)) for f in _KERNELS})


def kernels(parallel: bool) -> SimpleNamespace:
    """The kernel set to use: :data:`BY_SIZE` when parallel kernels are allowed, else :data:`SERIAL`."""
    return BY_SIZE if parallel else SERIAL
