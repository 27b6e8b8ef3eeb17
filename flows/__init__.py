"""gaugeflow.flows (under construction)."""

# --- spectral maps: eigen-angles, interval maps, canonical-cell angle maps (issue 4, items 4-5) ---
from .eig import eigen_angles, eigen_angles_vjp
from .splines import RQSpline, SineMap, interval_map
from .torus import CellAngleMap
from .spectral import SpectralMap, haar_log_density, n_params as spectral_n_params
# --- end spectral maps ---
