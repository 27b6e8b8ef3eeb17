"""gaugeflow.lattice: backend, geometry/layout (incl. MPI), SU(N) algebra, loops, gauge
actions with forces, HMC and ensemble I/O.

Conventions are those of docs/design.md §3-§5 and are restated in each module's docstring:
gauge fields have shape ``(*batch, Nd, L_0, ..., L_{Nd-1}, N, N)`` with time the last
lattice axis; su(N) inner product <A, B> = -2 tr(AB); forces satisfy
d/dt S(exp(tX)U)|_0 = sum <grad S, X>.
"""
from .backend import Rng, derive_seed, namespace, get_namespace, to_host, from_host
from .layout import Layout, LayoutError, scatter, gather, infer_gauge_layout
from .fields import (random_gauge, unit_gauge, random_gauge_transformation, gauge_transform,
                     links, link, stack_links, check_gauge_field)
from .loops import (plaquette, plaquette_planes, plaquette_spatial_temporal, plaquette_field,
                    rectangle_field, wilson_loop, path_product, polyakov_loop,
                    clover_field_strength, topological_charge, topological_charge_density)
from .su_n import InvalidGaugeField
from . import su_n, actions, loops, fields, backend
from . import io

__all__ = [
    "Rng", "derive_seed", "namespace", "get_namespace", "to_host", "from_host", "Layout", "LayoutError", "scatter",
    "gather", "infer_gauge_layout", "random_gauge", "unit_gauge", "random_gauge_transformation",
    "gauge_transform", "links", "link", "stack_links", "check_gauge_field", "plaquette",
    "plaquette_planes", "plaquette_spatial_temporal", "plaquette_field", "rectangle_field",
    "wilson_loop", "path_product", "polyakov_loop", "clover_field_strength", "topological_charge",
    "topological_charge_density", "InvalidGaugeField", "su_n", "actions", "loops", "fields", "backend",
    "io",
]
