"""Reverse-KL training (flows.train): both gradient estimators against finite differences of
their sample losses, exact zero path gradient at the Haar fixed point, agreement of the
estimators in expectation, training raises the ESS (reproducibly), checkpoint/resume, and
flow-based sampling (independence Metropolis, reweighting) against the exact 2d plaquette."""
import math

import numpy as np
import pytest

import flows
from flows.train import sample_loss_and_grad
from lattice import Layout, random_gauge
from lattice.actions import Wilson
from lattice.backend import Rng
from lattice.loops import plaquette

from flow_testing import perturbed, small_layer_kw
from physics_reference import wilson_2d_plaquette

LAY = Layout((4, 4))


def _model(loops="learned", kind="sine", n_layers=3, N=3, **kw):
    return flows.SpectralFlow(2, N, n_layers, loops, schedule="paper", direction_layers=2,
                              **{**small_layer_kw(2, kind), **kw})


def _ensemble_base(N=3, n=8, beta1=0.7):
    cfgs = random_gauge((4, 4), N=N, batch=(n,), seed=21)
    return flows.EnsembleBase(cfgs, flows.GaugeTarget(Wilson(beta1)), holdout=2, layout=LAY)


def _fd(fun, params, u, h=2e-5):
    f = {s: fun({k: v + s * h * u[k] for k, v in params.items()}) for s in (-2, -1, 1, 2)}
    return (-f[2] + 8 * f[1] - 8 * f[-1] + f[-2]) / (12 * h)


def _dot(g, u):
    return sum(float(np.sum(g[k] * u[k])) for k in u if g.get(k) is not None)


@pytest.mark.parametrize("loops", ["learned", "plaquette"])
@pytest.mark.parametrize("base_kind", ["haar", "ensemble"])
def test_gradients_equal_finite_differences_of_the_sample_losses(loops, base_kind):
    """plain: d/dtheta of mean[log r(z) - log J(z) - log p(f(z))];
    path: d/dtheta of mean[log q_theta0(f_theta(z)) - log p(f_theta(z))] with q frozen at the
    current parameters, log q_theta0(x) = log r(f_theta0^{-1}(x)) + log J_inv(x) (the base score
    enters through f^{-1}); fused and unfused path passes agree."""
    m = _model(loops)
    p0 = perturbed(m.init(0), 0.3, 2)
    target = flows.GaugeTarget(Wilson(2.0))
    base = flows.HaarBase((4, 4), 3) if base_kind == "haar" else _ensemble_base()
    z = base.sample(3, Rng(5))
    r = Rng(9)
    u = {k: r.normal(v.shape) for k, v in p0.items()}

    def plain_loss(p):
        x, lw = flows.log_weights(m, p, base, target, z, LAY)
        return -float(np.mean(lw))

    def path_loss(p):
        x, _ = m.forward(p, z, LAY)
        z0, logJi = m.inverse(p0, x, LAY)
        logq = base.log_prob(z0, LAY) + logJi
        return float(np.mean(logq - target.log_prob(x, LAY)))

    loss, g_plain, lw, _ = sample_loss_and_grad(m, p0, base, target, z, "plain", LAY)
    np.testing.assert_allclose(loss, plain_loss(p0), rtol=1e-12)
    np.testing.assert_allclose(_dot(g_plain, u), _fd(plain_loss, p0, u), rtol=1e-6)
    _, g_path, _, _ = sample_loss_and_grad(m, p0, base, target, z, "path", LAY)
    np.testing.assert_allclose(_dot(g_path, u), _fd(path_loss, p0, u), rtol=1e-6)
    _, g_unfused, _, _ = sample_loss_and_grad(m, p0, base, target, z, "path", LAY, fused=False)
    for k in g_path:
        np.testing.assert_allclose(g_path[k], g_unfused[k], atol=1e-10 * max(1.0, np.abs(g_unfused[k]).max()))
    assert abs(_dot(g_path, u) - _dot(g_plain, u)) > 1e-6      # different estimators per sample


@pytest.mark.parametrize("loops", ["learned", "plaquette", "rectangle"])
def test_path_gradient_vanishes_at_the_haar_fixed_point(loops):
    """Haar target, identity flow (zero heads, noisy staple nets): q = p exactly, so the path
    gradient is zero sample by sample (the plain one is not: its score term is noise)."""
    m = _model(loops, kind="spline")
    p = m.init(3, gain=0.5)
    target = flows.HaarBase((4, 4), 3)
    base = flows.HaarBase((4, 4), 3)
    for i in range(3):
        z = base.sample(1, Rng(i))
        loss, g, lw, _ = sample_loss_and_grad(m, p, base, target, z, "path", LAY)
        assert loss == 0.0
        assert all(np.all(v == 0.0) for v in g.values()), {k: np.abs(v).max() for k, v in g.items()}
    _, gp, _, _ = sample_loss_and_grad(m, p, base, target, z, "plain", LAY)
    assert max(np.abs(v).max() for v in gp.values()) > 1e-3


def test_estimators_agree_in_expectation():
    """plain - path = the score term d/dtheta log q_theta(x)|_x, whose expectation vanishes:
    the mean paired difference over batches is zero within its standard error (projected on
    two fixed directions)."""
    m = _model("plaquette", kind="spline", n_layers=2, N=2)
    p = perturbed(m.init(0), 0.3, 4)
    base = flows.HaarBase((4, 4), 2)
    target = flows.GaugeTarget(Wilson(1.0))
    r = Rng(1)
    dirs = [{k: r.normal(v.shape) for k, v in p.items()} for _ in range(2)]
    diffs, plains = [], []
    for i in range(40):
        z = base.sample(4, Rng(100 + i))
        _, ga, _, _ = sample_loss_and_grad(m, p, base, target, z, "plain", LAY)
        _, gb, _, _ = sample_loss_and_grad(m, p, base, target, z, "path", LAY)
        diffs.append([_dot(ga, u) - _dot(gb, u) for u in dirs])
        plains.append([_dot(ga, u) for u in dirs])
    d = np.array(diffs)
    mean, err = d.mean(0), d.std(0, ddof=1) / math.sqrt(len(d))
    assert np.all(np.abs(mean) < 4 * err), (mean, err)
    # the check has power: the mean gradient itself is resolved (not zero within errors)
    pl = np.array(plains)
    assert np.any(np.abs(pl.mean(0)) > 4 * pl.std(0, ddof=1) / math.sqrt(len(pl)))


def test_training_raises_the_ess_reproducibly(tmp_path):
    """2d SU(3) Wilson beta = 3 on 4x4 (Haar start: ESS ~ 0.04): a short path-gradient
    training gives a held-out ESS far above the untrained value; the same seed gives the same
    run, and a run resumed from a checkpoint continues exactly."""
    m = flows.SpectralFlow(2, 3, 4, "plaquette", schedule="simple", context_hidden=(8,), spline_bins=4,
                           spline_basis=2)
    base = flows.HaarBase((4, 4), 3)
    target = flows.GaugeTarget(Wilson(3.0))
    p0 = m.init(0)
    e0, _, _ = flows.evaluate_holdout(m, p0, base, target, LAY, n=128, batch_size=64, seed=1)
    p, hist = flows.train(m, p0, target, base, steps=40, batch_size=16, lr=0.02, seed=3, progress=False,
                          holdout_every=40, holdout_size=128)
    e1, _, _ = flows.evaluate_holdout(m, p, base, target, LAY, n=128, batch_size=64, seed=1)
    assert e0 < 0.15 and e1 > 0.4 and e1 > 4 * e0, (e0, e1)
    assert hist.holdout_ess[-1] > 0.4 and np.mean(hist.loss[-5:]) < np.mean(hist.loss[:5]) - 1.0
    # reproducibility and resume (short runs)
    ck = tmp_path / "ck.h5"
    pa, ha = flows.train(m, p0, target, base, steps=4, batch_size=4, lr=0.02, seed=5, progress=False)
    with pytest.raises(_Stop):        # a job killed after two steps
        flows.train(m, p0, target, base, steps=4, batch_size=4, lr=0.02, seed=5, progress=False,
                    checkpoint=ck, checkpoint_every=1, callback=_stop_after(2))
    pb, hb = flows.train(m, p0, target, base, steps=4, batch_size=4, lr=0.02, seed=5, progress=False,
                         checkpoint=ck)
    assert hb.step == ha.step == [0, 1, 2, 3]
    np.testing.assert_array_equal(hb.loss, ha.loss)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])


def test_an_interrupted_run_keeps_its_finished_steps(tmp_path):
    """A KeyboardInterrupt (Ctrl-C, a job's SIGTERM) during step 3 with checkpoints only every
    10 steps: the checkpoint then holds the 3 finished steps (history cut at them, also when
    the interrupt comes half-way through a step's bookkeeping), and the resumed run equals an
    uninterrupted one. Another exception (a bug, a failed step) writes no extra checkpoint."""
    m = flows.SpectralFlow(2, 3, 2, "plaquette", schedule="simple", context_hidden=(4,), spline_bins=4,
                           spline_basis=2)
    base = flows.HaarBase((4, 4), 3)
    target = flows.GaugeTarget(Wilson(3.0))
    p0 = m.init(0)
    kw = dict(steps=6, batch_size=4, lr=0.02, seed=5, progress=False, holdout_every=2, holdout_size=8)
    pa, ha = flows.train(m, p0, target, base, **kw)
    ck = tmp_path / "ck.h5"

    def interrupt_during_step_3(step, params, hist):
        if step == 2:                                   # step 3 (index 3) half-booked, then Ctrl-C
            hist.step.append(3)
            hist.loss.append(float("nan"))
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        flows.train(m, p0, target, base, checkpoint=ck, checkpoint_every=10, callback=interrupt_during_step_3, **kw)
    _, cfg, _ = flows.load_checkpoint(ck, p0)
    assert cfg["step"] == 3
    pb, hb = flows.train(m, p0, target, base, checkpoint=ck, checkpoint_every=10, **kw)
    assert hb.step == ha.step == list(range(6)) and hb.holdout_step == ha.holdout_step == [0, 2, 4, 6]
    np.testing.assert_array_equal(hb.loss, ha.loss)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
    ck2 = tmp_path / "ck2.h5"
    with pytest.raises(_Stop):
        flows.train(m, p0, target, base, checkpoint=ck2, checkpoint_every=10, callback=_stop_after(3), **kw)
    assert not ck2.exists()


class _Stop(Exception):
    pass


def _stop_after(n):
    def cb(step, params, hist):
        if step + 1 >= n:
            raise _Stop
    return cb


def test_independence_metropolis_and_reweighting_give_the_exact_plaquette():
    """2d SU(2) Wilson beta = 0.5 on 4x4 (finite-volume corrections ~ (I_2/I_1)^16 < 1e-14):
    independence Metropolis with a (generic, untrained) flow proposal and reweighting both
    reproduce the exact plaquette I_2(beta)/I_1(beta). (At ESS of a few per cent the
    log-weights are so heavy-tailed that error estimates from 10^3 samples are unreliable,
    hence the mild coupling.)"""
    from analysis import gamma_method
    m = _model("learned", kind="spline", n_layers=3, N=2)
    p = perturbed(m.init(0), 0.05, 7)
    base = flows.HaarBase((4, 4), 2)
    target = flows.GaugeTarget(Wilson(0.5))
    obs = lambda x: plaquette(x, LAY)
    vals, acc, lws, rate = flows.independence_metropolis(m, p, base, target, 2000, batch_size=500, seed=2,
                                                         layout=LAY, observable=obs)
    exact = wilson_2d_plaquette(0.5, 2)
    g = gamma_method(vals)
    assert 0.2 < rate < 1.0 and acc.shape == (2000,) and lws.shape == (2000,)
    assert abs(g.mean - exact) < 4 * g.err, (g.mean, g.err, exact)
    est, e = flows.reweighted_observable(m, p, base, target, obs, 2000, batch_size=500, seed=3, layout=LAY)
    assert 0.0 < e <= 1.0
    assert abs(est.mean - exact) < 4 * est.err, (est.mean, est.err, exact)


def test_named_results_and_swapped_base_target():
    """log_weights, evaluate_holdout and independence_metropolis return named tuples (old
    unpacking works); train takes (target, base), the others (base, target): a swap raises."""
    m = _model("plaquette", n_layers=2, N=2)
    p = m.init(0)
    base = flows.HaarBase((4, 4), 2)
    target = flows.GaugeTarget(Wilson(0.5))
    z = base.sample(3, Rng(4))
    res = flows.log_weights(m, p, base, target, z, LAY)
    assert isinstance(res, flows.FlowLogWeights) and isinstance(res, tuple)
    x, lw = res
    assert res.x is x and res.log_w is lw and lw.shape == (3,) and x.shape == z.shape
    ho = flows.evaluate_holdout(m, p, base, target, LAY, n=4, batch_size=4, seed=1)
    assert isinstance(ho, flows.HoldoutResult)
    e, loss, lws = ho
    assert (ho.ess, ho.loss) == (e, loss) and ho.log_w is lws and lws.shape == (4,)
    ch = flows.independence_metropolis(m, p, base, target, 6, batch_size=3, seed=2, layout=LAY,
                                       observable=lambda U: plaquette(U, LAY))
    assert isinstance(ch, flows.MetropolisChain)
    vals, acc, lw_chain, rate = ch
    assert ch.chain is vals and ch.accepted is acc and ch.log_w is lw_chain and ch.acceptance == rate
    assert vals.shape == acc.shape == (6,)
    # swapped target and base: a TypeError that explains both orders (not a silently wrong sign)
    for call in (lambda: flows.log_weights(m, p, target, base, z, LAY),
                 lambda: sample_loss_and_grad(m, p, target, base, z, "path", LAY),
                 lambda: flows.evaluate_holdout(m, p, target, base, LAY, n=4, batch_size=4),
                 lambda: flows.independence_metropolis(m, p, target, base, 2, layout=LAY),
                 lambda: flows.reweighted_observable(m, p, target, base, lambda U: plaquette(U, LAY), 2),
                 lambda: flows.train(m, p, base, target, steps=1, batch_size=2, progress=False)):
        with pytest.raises(TypeError, match=r"look swapped.*train takes \(model, params, target, base"):
            call()
