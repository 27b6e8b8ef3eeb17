"""Shared pytest configuration: hypothesis profiles sized for 2-core CI."""
import os

from hypothesis import settings, HealthCheck

# "ci" (default) is derandomized: the same examples on every run, so CI results are
# reproducible; "thorough" draws fresh random examples (HYPOTHESIS_PROFILE=thorough).
settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
