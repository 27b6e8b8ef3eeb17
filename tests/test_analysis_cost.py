"""Cost model of the paper's eq. (19) (analysis.cost)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import analysis as an
from analysis.cost import PAPER_COSTS


def test_paper_break_even_numbers():
    c_eps, c_flow = an.per_config_costs(generation=0.17, measurement=0.17, flow_eval=0.01, reweighting=0.04)
    assert (c_eps, c_flow) == (pytest.approx(0.34), pytest.approx(0.56))
    n5 = an.break_even(5, training=4608, c_flow=c_flow, c_eps=c_eps)
    n10 = an.break_even(10, training=4608, c_flow=c_flow, c_eps=c_eps)
    assert round(n5) == 4042 and round(n10) == 1623             # "after 4k configurations"; ≈1.6k at r=10
    assert PAPER_COSTS["training_8d_16gpu"] == 3072.0           # 8 days × 24 h × 16 GPUs
    n = an.break_even(np.array([5.0, 10.0]), training=3072, c_flow=c_flow, c_eps=c_eps)
    np.testing.assert_array_equal(np.round(n), [2695, 1082])
    text = repr(an.paper_example())
    assert "4042" in text and "1623" in text and "2695" in text and "1082" in text and "3072" in text


@given(st.floats(1.0, 50.0), st.floats(0.0, 1e5), st.floats(0.01, 2.0), st.floats(0.01, 2.0))
def test_break_even_is_where_costs_cross(r, training, c_flow, c_eps):
    n = an.break_even(r, training, c_flow, c_eps)
    if r * c_eps <= c_flow:
        assert n == np.inf
        return
    flows, eps = an.total_costs(n, r, training, c_flow, c_eps)
    assert flows == pytest.approx(eps, rel=1e-9, abs=1e-9)
    more_f, more_e = an.total_costs(n * 1.01 + 1, r, training, c_flow, c_eps)
    assert more_f <= more_e + 1e-9


def test_cost_input_errors():
    with pytest.raises(ValueError):
        an.break_even(0.0, 100, 0.5, 0.3)
    with pytest.raises(ValueError):
        an.break_even(5.0, -1, 0.5, 0.3)
