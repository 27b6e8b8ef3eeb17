"""Kernel layer: the hot operations, each with one array-API reference implementation and
optional fast implementations per backend (docs/design.md §3, "Kernels").

Every public function here dispatches on the array namespace of its arguments:

* ``"reference"`` - the array-API formulation (``xp.matmul``, ``xp.linalg``): the test oracle
  and the fallback for any namespace without a fast path (``array_api_strict``, ...);
* ``"numba"`` - compiled loop nests over colour-first arrays, site index innermost
  (:mod:`lattice.kernels._numba`), for NumPy arrays;
* ``"cupy"`` - fused element-wise CUDA kernels, one thread per site
  (:mod:`lattice.kernels._cupy`, loaded only when a CuPy array arrives).

:func:`implementation` says which one a namespace gets; :func:`reference_only` forces the
reference everywhere inside a ``with`` block (tests compare the two; ``make bench`` times both
in the same run). No other module of ``lattice/``, ``flows/`` or ``fermions/`` contains its
own fast path: callers go through these functions.

Colour-first matrix fields
--------------------------
The SU(N) kernels act on *colour-first* stacks of N x N matrices, shape ``(N, N, *rest)``
with ``rest`` the batch/channel/site axes (structure-of-arrays: each matrix entry is one
contiguous vector over sites). Entry-wise formulas then run over long contiguous vectors on
the CPU and coalesce on the GPU; a stacked ``@`` on colour-last ``(*rest, N, N)`` arrays does
not. :func:`colour_first` / :func:`colour_last` convert (one copy each way); the gauge-field
convention of the public API stays colour-last (docs/design.md §3).

Staple networks and shifts
--------------------------
:func:`staple_pairs` / :func:`staple_pairs_vjp` (:mod:`lattice.kernels.staple_pairs`): the
transported staples of a staple-network layer and their adjoint, one fused product chain per
direction pair. :func:`periodic_shift` (:mod:`lattice.kernels.shift`): the local part of
``Layout.shift``, compiled where the site extents are short.

The derivative map of exp
-------------------------
:func:`phi_ad` / :func:`phi_ad_vjp` (:mod:`lattice.kernels.dexp`): phi(ad X) = (1 - e^{-ad X})/ad X
as a real (N^2 - 1) x (N^2 - 1) matrix per link (the left-trivialised differential of exp
that the residual flows need for their Jacobians) and its adjoint.

Wilson lines at chosen sites
----------------------------
:func:`line_table` / :func:`line_sums` / :func:`line_sums_vjp` (:mod:`lattice.kernels.lines`):
sums of Wilson lines (e.g. the staple sums of a residual layer) evaluated only at given start
sites, read through neighbour tables on one process, and their adjoint.

Wilson hopping term
-------------------
:func:`wilson_hop` / :func:`wilson_hop_eo` (:mod:`lattice.kernels.hopping`): the hopping term
of the Wilson-Dirac operator on the full lattice and its even-odd blocks, with the adjoint
gamma_5 H gamma_5 as a flag, on spin/colour-major spinors ``(*batch, 4, N, *sites)``. The
fermion operators of :mod:`fermions` call it; the reference takes the neighbours from the
layout (MPI halo exchange), the compiled paths compute neighbour indices themselves (on a
distributed layout on the local block with ghost layers: bit-identical to one process).
"""
from __future__ import annotations

from .dispatch import implementation, reference_only
from .colour import colour_first, colour_last, mul, mul_reference, mul_gather, real_inner, real_mix, matmul
from .eigh3 import eigh, polar
from .expm3 import expm
from .dexp import phi_ad, phi_ad_vjp, phi_ad_reference, phi_ad_vjp_reference
from .lines import LineTable, line_table, ghost_line_tables, line_sums, line_sums_vjp, line_sums_reference, line_sums_vjp_reference
from .hopping import wilson_hop, wilson_hop_eo, wilson_hop_reference
from .shift import periodic_shift, periodic_shift_reference
from .staple_pairs import (staple_pairs, staple_pairs_vjp, staple_pairs_reference, staple_pairs_vjp_reference,
                           transported_staples, transported_staples_vjp, ghosted_input)
from .staple_mix import transported_mix, transported_mix_vjp

__all__ = ["implementation", "reference_only", "colour_first", "colour_last", "mul", "mul_reference", "mul_gather",
           "real_inner", "real_mix", "matmul", "eigh", "polar", "expm", "phi_ad", "phi_ad_vjp", "phi_ad_reference",
           "phi_ad_vjp_reference", "wilson_hop", "wilson_hop_eo", "wilson_hop_reference",
           "periodic_shift", "periodic_shift_reference", "staple_pairs", "staple_pairs_vjp", "staple_pairs_reference",
           "staple_pairs_vjp_reference", "transported_staples", "transported_staples_vjp", "ghosted_input", "transported_mix",
           "transported_mix_vjp", "LineTable", "line_table", "ghost_line_tables",
           "line_sums", "line_sums_vjp", "line_sums_reference", "line_sums_vjp_reference"]
