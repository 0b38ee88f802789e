"""The closed-form updates: MEMIT's ridge solve and AlphaEdit's null-space-projected solve."""

import pytest
import torch

from intattn_tl.edit.solve import nullspace_projector, solve_delta, solve_projected


def _spd(d, m=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    K0 = torch.randn(d, m, generator=g, dtype=torch.float64)
    return K0, K0 @ K0.T / m


def test_lam_to_zero_maps_each_new_key_to_its_value():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(8, 16, generator=g, dtype=torch.float64)
    K = torch.randn(16, 5, generator=g, dtype=torch.float64)
    V = torch.randn(8, 5, generator=g, dtype=torch.float64)  # wanted values
    _, C = _spd(16)
    D = solve_delta(V - W @ K, K, C, lam=1e-9)
    assert torch.allclose((W + D) @ K, V, atol=1e-6)


def test_matches_the_formula_and_preserved_keys_move_little():
    K0, C = _spd(16)
    g = torch.Generator().manual_seed(2)
    K = torch.randn(16, 3, generator=g, dtype=torch.float64)
    R = torch.randn(8, 3, generator=g, dtype=torch.float64)
    lam = 5.0
    D = solve_delta(R, K, C, lam)
    assert D.dtype == torch.float64
    assert torch.allclose(D, R @ K.T @ torch.linalg.inv(lam * C + K @ K.T), atol=1e-10)
    # The corpus keys' outputs move much less than the edited keys' (relative to |R|).
    moved_new = (D @ K).norm(dim=0).mean() / R.norm(dim=0).mean()
    moved_old = (D @ K0).norm(dim=0).mean() / R.norm(dim=0).mean()
    assert moved_new > 0.3 and moved_old < 0.5 * moved_new


def test_singular_system_raises_instead_of_returning_junk():
    K = torch.eye(4, dtype=torch.float64)[:, :2]  # lam = 0 and 2 keys in 4 dims: lam C + K K^T is singular
    with pytest.raises(torch.linalg.LinAlgError):
        solve_delta(torch.ones(3, 2, dtype=torch.float64), K, torch.eye(4, dtype=torch.float64), lam=0.0)


def test_shape_mismatch_is_refused(unchecked):
    with unchecked(), pytest.raises(ValueError, match="shape mismatch"):
        solve_delta(torch.zeros(3, 2), torch.zeros(4, 3), torch.eye(4), 1.0)


def test_projected_update_leaves_preserved_keys_unchanged():
    d = 12
    g = torch.Generator().manual_seed(3)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    # Corpus keys live in an 8-dim subspace: C has 4 (near-)zero eigenvalues.
    K0 = basis[:, :8] @ torch.randn(8, 500, generator=g, dtype=torch.float64)
    C = K0 @ K0.T / 500
    P, dim = nullspace_projector(C, threshold=1e-8)
    assert dim == 4 and torch.allclose(P @ P, P, atol=1e-10)
    K = torch.randn(d, 3, generator=g, dtype=torch.float64)
    R = torch.randn(6, 3, generator=g, dtype=torch.float64)
    D = solve_projected(R, K, P, torch.zeros(d, d, dtype=torch.float64), l2=1e-3)
    assert (D @ K0).abs().max() < 1e-8  # preserved outputs exactly unchanged
    assert (D @ K - R).norm() < 0.9 * R.norm()  # and the edit still moves the new keys toward R
    # Keys already edited in an earlier batch (K_p) are protected too: their outputs move less with them.
    Kp = P @ torch.randn(d, 4, generator=g, dtype=torch.float64)
    free = solve_projected(R, K, P, torch.zeros(d, d, dtype=torch.float64), l2=1e-3)
    kept = solve_projected(R, K, P, 1e3 * Kp @ Kp.T, l2=1e-3)
    assert (kept @ Kp).norm() < 0.1 * (free @ Kp).norm()
