"""Solver and preconditioner objects (fermions.solvers, fermions.preconditioners; docs/design.md §6):
the object path gives the keyword path's solution, the true residual of M psi = b meets the
tolerance for every solver/preconditioner pair, failures raise through it, and the pieces of
the preconditioners satisfy their identities against dense matrices."""
import dataclasses

import numpy as np
import pytest

import lattice as L
import fermions as F
from fermions.cg import CGNotConverged, CGWarning

SHAPE = (4, 2, 2, 4)
KAPPA, MU = 0.2, 0.05


@pytest.fixture(scope="module")
def op():
    return F.TwistedMassWilson(L.random_gauge(SHAPE, seed=4, batch=(2,)), KAPPA, MU)


@pytest.fixture(scope="module")
def b(op):
    return L.Rng(6).complex_normal(lead=(3, 2), layout=op.layout, inner=(4, 3))


def _rel(op, psi, b):
    r = b - op.apply(psi)
    ax = tuple(range(2, b.ndim))
    return np.sqrt(np.sum(np.abs(r) ** 2, axis=ax) / np.sum(np.abs(b) ** 2, axis=ax))


def test_keywords_build_the_solver_objects_bit_for_bit(op, b):
    for precision, solver in (("double", F.CG(1e-11)), ("mixed", F.MixedPrecision(1e-11))):
        psi_kw, info_kw = op.solve(b, tol=1e-11, precision=precision)
        psi_obj, info_obj = op.solve(b, solver=solver, preconditioner=F.EvenOddSchur())
        assert np.array_equal(psi_kw, psi_obj)
        assert info_kw.cg.iterations == info_obj.cg.iterations
        assert info_kw.solver == info_obj.solver == solver.config()
        assert info_obj.preconditioner == {"kind": "EvenOddSchur"}
    b_o = op.pack(b)[1]
    x_kw, _ = op.solve_schur(b_o, tol=1e-10, precision="mixed")
    x_obj, _ = op.solve_schur(b_o, solver=F.MixedPrecision(tol=1e-10))
    assert np.array_equal(x_kw, x_obj)


@pytest.mark.parametrize("solver", [F.CG(1e-11), F.MixedPrecision(1e-11),
                                    F.MixedPrecision(1e-11, inner=F.CG(1e-3, maxiter=20))],
                         ids=["cg", "mixed", "mixed-short-inner"])
@pytest.mark.parametrize("pre", [F.EvenOddSchur(), F.NoPreconditioner()], ids=["eo", "none"])
def test_every_solver_and_preconditioner_solves_M(op, b, solver, pre):
    ref, _ = op.solve(b, tol=1e-12)
    psi, info = op.solve(b, solver=solver, preconditioner=pre)
    rel = _rel(op, psi, b)
    assert rel.max() < 1e-9 and abs(info.residual - rel.max()) < 1e-12
    assert info.cg.converged and info.cg.residual <= solver.tol
    assert np.abs(psi - ref).max() < 1e-8 * np.abs(ref).max()
    assert info.preconditioner == pre.config() and info.solver == solver.config()
    if isinstance(solver, F.MixedPrecision):
        assert info.cg.precision == "mixed" and info.cg.low_iterations > 0


def test_inner_maxiter_caps_each_low_precision_step(op, b):
    b_o = op.pack(b)[1]
    _, free = op.solve_schur(b_o, solver=F.MixedPrecision(1e-10))
    _, capped = op.solve_schur(b_o, solver=F.MixedPrecision(1e-10, inner=F.CG(1e-5, maxiter=10)))
    assert capped.converged and capped.restarts > free.restarts
    assert capped.low_iterations <= 10 * capped.restarts


def test_low_dtype_complex128_is_iterative_refinement_in_double(op, b):
    x, info = op.solve_schur(op.pack(b)[1], solver=F.MixedPrecision(1e-11, low_dtype="complex128"))
    assert info.converged and info.precision == "mixed"


@pytest.mark.parametrize("solver", [F.CG(maxiter=2), F.MixedPrecision(maxiter=2)], ids=["cg", "mixed"])
@pytest.mark.parametrize("pre,name", [(F.EvenOddSchur(), r"M\^dag M\^ \(even-odd\)"),
                                      (F.NoPreconditioner(), r"M\^dag M \(full lattice\)")], ids=["eo", "none"])
def test_non_convergence_raises_through_the_object_path(op, b, solver, pre, name):
    with pytest.raises(CGNotConverged, match=rf"^CG on {name} did not converge: .*maxiter 2\)") as e:
        op.solve(b, solver=solver, preconditioner=pre)
    assert e.value.info is not None and not e.value.info.converged
    warn = dataclasses.replace(solver, on_failure="warn")
    with pytest.warns(CGWarning, match="did not converge"):
        _, info = op.solve(b, solver=warn, preconditioner=pre)
    assert not info.cg.converged


def test_solver_settings_are_validated(op, b):
    with pytest.raises(ValueError, match="either solver= or tol, precision"):
        op.solve(b, tol=1e-8, precision="mixed", solver=F.CG())
    with pytest.raises(ValueError, match="precision must be 'double' or 'mixed'"):
        op.solve(b, precision="single")
    with pytest.raises(ValueError, match="tol must be a positive number"):
        F.CG(tol=0)
    with pytest.raises(ValueError, match="maxiter must be >= 1"):
        F.MixedPrecision(maxiter=0)
    with pytest.raises(ValueError, match="on_failure"):
        F.CG(on_failure="ignore")
    with pytest.raises(TypeError, match="inner must be a CG"):
        F.MixedPrecision(inner=1e-5)
    with pytest.raises(ValueError, match="low_dtype"):
        F.MixedPrecision(low_dtype="float16")
    with pytest.raises(dataclasses.FrozenInstanceError):
        F.CG().tol = 1.0


def test_mixed_precision_needs_the_low_precision_operator(op, b):
    b_o = op.pack(b)[1]
    with pytest.raises(TypeError, match="apply_A_low"):
        F.MixedPrecision().solve(op.apply_schur_normal, b_o, layout=op.half_layout)
    low = op.astype(np.complex64)
    x, info = F.MixedPrecision(1e-10).solve(op.apply_schur_normal, b_o, layout=op.half_layout,
                                            apply_A_low=low.apply_schur_normal)
    y, _ = F.MixedPrecision(1e-10).solve(F.LinearMap(op, "apply_schur_normal"), b_o, layout=op.half_layout)
    assert info.converged and np.array_equal(x, y)


def test_configs_round_trip():
    for s in (F.CG(), F.CG(1e-8, 100, "warn"), F.MixedPrecision(1e-9, inner=F.CG(1e-4, maxiter=50))):
        cfg = s.config()
        assert F.solver_from_config(cfg) == s and cfg == F.solver_from_config(cfg).config()
    for p in (F.EvenOddSchur(), F.NoPreconditioner()):
        assert F.preconditioner_from_config(p.config()) == p
    with pytest.raises(ValueError, match="unknown solver kind"):
        F.solver_from_config({"kind": "BiCGStab"})


def test_preconditioner_pieces_against_dense_matrices():
    U = L.random_gauge(SHAPE, seed=11)
    op = F.TwistedMassWilson(U, 0.17, -0.2)
    b = L.Rng(2).complex_normal(layout=op.layout, inner=(4, 3))
    M = F.dense_M(U, 0.17, -0.2)
    S = F.dense_schur(U, 0.17, -0.2)
    psi = np.linalg.solve(M, b.ravel()).reshape(b.shape)                 # exact M psi = b
    psi_o = op.pack(psi)[1]
    eo = F.EvenOddSchur()
    c = eo.prepare(op, b)
    assert np.abs(S @ psi_o.ravel() - c.ravel()).max() < 1e-12            # M^ psi_o = b_o - M_oe A^-1 b_e
    assert np.abs(eo.reconstruct(op, b, psi_o) - psi).max() < 1e-12       # psi_e = A^-1 (b_e - M_eo psi_o)
    x = L.Rng(3).complex_normal(layout=op.half_layout, inner=(4, 3))
    assert np.abs(eo.normal(op)(x).ravel() - S.conj().T @ (S @ x.ravel())).max() < 1e-12
    assert np.abs(eo.rhs_normal(op, c).ravel() - S.conj().T @ c.ravel()).max() < 1e-12
    assert eo.layout(op).global_shape == (2, 2, 2, 4) and F.NoPreconditioner().layout(op) is op.layout
    none = F.NoPreconditioner()
    assert none.prepare(op, b) is b and none.reconstruct(op, b, psi) is psi
    assert np.abs(none.normal(op)(b).ravel() - M.conj().T @ (M @ b.ravel())).max() < 1e-12
    assert np.abs(none.rhs_normal(op, b).ravel() - M.conj().T @ b.ravel()).max() < 1e-12


def test_no_preconditioner_solves_where_even_odd_does_not_exist():
    U = L.random_gauge((3, 2, 2, 4), seed=7)                                # odd extent: no even-odd packing
    op = F.TwistedMassWilson(U, 0.12, 0.1)
    b = L.Rng(1).complex_normal(layout=op.layout, inner=(4, 3))
    with pytest.raises(F.EvenOddError):
        op.solve(b)
    psi, info = op.solve(b, solver=F.CG(1e-11), preconditioner=F.NoPreconditioner())
    assert info.residual < 1e-9
    want = np.linalg.solve(F.dense_M(U, 0.12, 0.1), b.ravel())
    assert np.abs(psi.ravel() - want).max() < 1e-9 * np.abs(want).max()
