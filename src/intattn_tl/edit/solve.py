"""The closed-form least-squares updates of a linear associative memory W: keys k -> values W k.

MEMIT: minimise ||(W+D) K - (W K + R)||^2 + lam * E_corpus||D k0||^2  =>  D = R K^T (lam C + K K^T)^-1.
AlphaEdit: restrict D to D = D P, with P the projector onto the null space of the corpus keys, so
D k0 = 0 for every preserved key:  D = R K^T P (P (K K^T + K_p K_p^T) + l2 I)^-1   (their Eq. 14).
All in float64; never an explicit inverse.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def _sym_solve(A: Float[Tensor, "d d"], B: Float[Tensor, "d m"]) -> Float[Tensor, "d m"]:
    """A^-1 B for symmetric A: Cholesky when A is positive definite, LU otherwise (e.g. lam = 0)."""
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(B, L)
    return torch.linalg.solve(A, B)


def solve_delta(R: Float[Tensor, "d_out n"], K: Float[Tensor, "d_in n"], C: Float[Tensor, "d_in d_in"],
                lam: float) -> Float[Tensor, "d_out d_in"]:
    """D = R K^T (lam C + K K^T)^-1, computed as (A^-1 K R^T)^T with A symmetric."""
    if R.shape[1] != K.shape[1] or C.shape != (K.shape[0], K.shape[0]):
        raise ValueError(f"shape mismatch: R {tuple(R.shape)}, K {tuple(K.shape)}, C {tuple(C.shape)}")
    R, K, C = R.double().to(K.device), K.double(), C.double().to(K.device)  # on the keys' (= weight's) device
    A = lam * C + K @ K.T
    return _sym_solve(A, K @ R.T).T


def nullspace_projector(C: Float[Tensor, "d d"], threshold: float) -> tuple[Float[Tensor, "d d"], int]:
    """P = U0 U0^T over the eigenvectors of C with eigenvalue < threshold (AlphaEdit); and their number."""
    S, U = torch.linalg.eigh(C.double())
    U0 = U[:, S < threshold]
    return U0 @ U0.T, U0.shape[1]


def solve_projected(R: Float[Tensor, "d_out n"], K: Float[Tensor, "d_in n"], P: Float[Tensor, "d_in d_in"],
                    K_prev_cov: Float[Tensor, "d_in d_in"], l2: float) -> Float[Tensor, "d_out d_in"]:
    """AlphaEdit: D = X^T with (P (K K^T + K_p K_p^T) + l2 I) X = P K R^T.

    X = (P K R^T - P M X) / l2 lies in range(P), so D = D P and D k0 = 0 whenever P k0 = 0.
    The system is not symmetric, hence the general solver.
    """
    R, K, P = R.double().to(K.device), K.double(), P.double().to(K.device)
    A = P @ (K @ K.T + K_prev_cov.double().to(K.device)) + l2 * torch.eye(K.shape[0], dtype=torch.float64, device=K.device)
    return torch.linalg.solve(A, P @ K @ R.T).T
