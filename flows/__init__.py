"""gaugeflow.flows (under construction)."""

# --- staplenet block: projection, staple and context networks, paths, Adam, parameter files ---
from .module import Module, Params
from .projection import (ProjectionError, project_u, project_su, project_u_fwd, project_u_vjp,
                         project_su_fwd, project_su_vjp, ProjectU, ProjectSU)
from .staples import StapleNet
from .context import ContextNet
from .paths import paths_fwd, paths_vjp
from .optim import Adam, LRSchedule
from .serialize import ParamFileError, save_params, load_params, load_group, read_config, check_params
# --- end staplenet block ---

# --- spectral maps: eigen-angles, interval maps, canonical-cell angle maps (issue 4, items 4-5) ---
from .eig import eigen_angles, eigen_angles_vjp
from .splines import RQSpline, SineMap, interval_map
from .torus import CellAngleMap
from .spectral import SpectralMap, haar_log_density, n_params as spectral_n_params
# --- end spectral maps ---
