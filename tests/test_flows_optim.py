"""flows.Adam and flows.LRSchedule."""
import math

import numpy as np
import pytest

import flows
from lattice.backend import get_namespace


def test_two_steps_by_hand():
    """Kingma & Ba, Algorithm 1, written out for two scalar updates."""
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    p0, g1, g2 = 1.0, 0.5, -0.2
    # step 1
    m1 = (1 - b1) * g1
    v1 = (1 - b2) * g1 ** 2
    p1 = p0 - lr * (m1 / (1 - b1)) / (math.sqrt(v1 / (1 - b2)) + eps)
    # step 2
    m2 = b1 * m1 + (1 - b1) * g2
    v2 = b2 * v1 + (1 - b2) * g2 ** 2
    p2 = p1 - lr * (m2 / (1 - b1 ** 2)) / (math.sqrt(v2 / (1 - b2 ** 2)) + eps)
    opt = flows.Adam(lr, betas=(b1, b2), eps=eps)
    params = {"a": np.array([p0, -p0]), "b": np.array(3.0)}
    state = opt.init(params)
    params, state, info = opt.update(params, {"a": np.array([g1, -g1])}, state)
    assert abs(params["a"][0] - p1) < 1e-15 and abs(params["a"][1] + p1) < 1e-15
    assert params["b"] == 3.0                       # missing gradient = zero gradient
    assert info["step"] == 1 and info["lr"] == lr
    params, state, _ = opt.update(params, {"a": np.array([g2, -g2]), "b": np.array(0.0)}, state)
    assert abs(params["a"][0] - p2) < 1e-15 and abs(params["a"][1] + p2) < 1e-15
    assert state["t"] == 2
    # the first step of Adam moves by lr regardless of the gradient size
    assert abs((p0 - p1) - lr) < 1e-6


def test_clipping_scales_the_global_norm():
    opt = flows.Adam(1.0, clip_norm=1.0, betas=(0.0, 0.0))
    params = {"a": np.zeros(2), "b": np.zeros(1)}
    g = {"a": np.array([3.0, 0.0]), "b": np.array([4.0])}
    st = opt.init(params)
    _, st, info = opt.update(params, g, st)
    assert info["grad_norm"] == 5.0 and info["clip_scale"] == pytest.approx(0.2)
    np.testing.assert_allclose(st["m"]["a"], [0.6, 0.0])
    np.testing.assert_allclose(st["m"]["b"], [0.8])
    _, _, info = opt.update(params, {"a": np.array([0.3, 0.0])}, opt.init(params))
    assert info["clip_scale"] == 1.0


def test_schedules():
    s = flows.LRSchedule(1.0, "cosine", total_steps=110, warmup_steps=10, min_lr=0.1)
    assert s(5) == pytest.approx(0.5)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.55)
    assert s(110) == pytest.approx(0.1)
    assert s(1000) == pytest.approx(0.1)
    lin = flows.LRSchedule(2.0, "linear", total_steps=4)
    assert [lin(t) for t in range(1, 5)] == pytest.approx([1.5, 1.0, 0.5, 0.0])
    assert flows.LRSchedule(0.3)(12345) == 0.3
    assert flows.LRSchedule(**s.config())(60) == s(60)
    with pytest.raises(ValueError, match="total_steps"):
        flows.LRSchedule(1.0, "cosine")
    opt = flows.Adam(s)
    p = {"x": np.ones(1)}
    st = opt.init(p)
    _, st, info = opt.update(p, {"x": np.ones(1)}, st)
    assert info["lr"] == pytest.approx(0.1)


def test_state_round_trip_resumes_exactly(tmp_path):
    rng = np.random.default_rng(0)
    grads = [{"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)} for _ in range(6)]
    opt = flows.Adam(1e-2, clip_norm=2.0)
    p = {"w": np.zeros((3, 2)), "b": np.ones(2)}
    st = opt.init(p)
    for g in grads:
        p, st, _ = opt.update(p, g, st)
    q = {"w": np.zeros((3, 2)), "b": np.ones(2)}
    s2 = opt.init(q)
    for g in grads[:3]:
        q, s2, _ = opt.update(q, g, s2)
    path = tmp_path / "ckpt.h5"
    flows.save_params(path, q, {"opt": opt.config()}, groups={"adam": opt.state_to_arrays(s2)})
    q, cfg = flows.load_params(path)
    s2 = flows.Adam.state_from_arrays(flows.load_group(path, "adam"))
    assert s2["t"] == 3 and cfg["opt"]["clip_norm"] == 2.0
    for g in grads[3:]:
        q, s2, _ = opt.update(q, g, s2)
    for k in p:
        np.testing.assert_array_equal(p[k], q[k])


def test_nonfinite_gradients():
    p = {"x": np.ones(2), "y": np.ones(1)}
    opt = flows.Adam(0.1)
    st = opt.init(p)
    with pytest.raises(FloatingPointError, match="'y'"):
        opt.update(p, {"x": np.ones(2), "y": np.array([np.nan])}, st)
    opt = flows.Adam(0.1, skip_nonfinite=True)
    p2, st2, info = opt.update(p, {"y": np.array([np.inf])}, st)
    assert info["skipped"] and st2["t"] == 0 and p2 is p


def test_bad_inputs():
    opt = flows.Adam(0.1)
    p = {"x": np.ones(2)}
    st = opt.init(p)
    with pytest.raises(KeyError, match="z"):
        opt.update(p, {"z": np.ones(2)}, st)
    with pytest.raises(ValueError, match="shape"):
        opt.update(p, {"x": np.ones(3)}, st)
    with pytest.raises(TypeError, match="complex"):
        opt.init({"c": np.ones(2, complex)})


def test_array_api_strict():
    xs = get_namespace("array_api_strict")
    opt = flows.Adam(0.1)
    p = {"x": xs.asarray([1.0, 2.0])}
    st = opt.init(p)
    p, st, _ = opt.update(p, {"x": xs.asarray([0.5, -0.5])}, st)
    np.testing.assert_allclose(np.asarray(p["x"]), [0.9, 2.1], atol=1e-7)
