"""gaugeflow.flows: gauge-equivariant normalizing flows for SU(N) lattice gauge fields -- spectral
coupling layers with learned active loops (paper section 2) and residual layers for correlated
ensembles (section 3), composed by :class:`Flow` -- with hand-written adjoints.

This package imports :mod:`lattice` only. ``flows.ess`` is :func:`analysis.ess` (the project's
one ESS), imported on first use so that ``import flows`` does not import :mod:`analysis` (and
SciPy).
"""

# building blocks: projection, staple and context networks, Wilson lines, Adam, parameter files
from .module import Module, Params
from .projection import (ProjectionError, project_u, project_su, project_u_fwd, project_u_vjp,
                         project_su_fwd, project_su_vjp, ProjectU, ProjectSU)
from .staples import StapleNet
from .context import ContextNet
from .paths import paths_fwd, paths_vjp
from .optim import Adam, LRSchedule
from .serialize import (ParamFileError, save_params, load_params, load_group, read_config, check_params,
                        read_file_provenance)

# spectral maps: eigen-angles, interval maps, canonical-cell angle maps
from .eig import eigen_angles, EigenAngles, eigen_angles_vjp
from .splines import RQSpline, SineMap, interval_map
from .torus import CellAngleMap
from .spectral import SpectralMap, haar_log_density, n_params as spectral_n_params

# masks, spectral coupling layers, models, targets and bases, training
from .masks import (LayerMask, direction_mask, location_mask, paper_schedule, simple_schedule,
                    check_covers_every_link, check_triangular)
from .layers import CouplingLayer, fixed_staple_path
from .model import SpectralFlow, save, load, build_schedule
from .targets import GaugeTarget, Target, HaarBase, EnsembleBase, as_target
from .train import (train, sample_loss_and_grad, log_weight, log_weights, evaluate_holdout, independence_metropolis,
                    reweighted_observable, FlowLogWeights, HoldoutResult, MetropolisChain,
                    TrainHistory, save_checkpoint, load_checkpoint)

# the layer protocol, flows of mixed layers, shared active-link helpers
from .protocol import GaugeLayer, register_layer, layer_from_config, registered_layers, UnknownLayerType
from .active import ActiveSites
from .model import Flow

# residual flows: the correlated-ensemble marginal model (paper section 3)
from .masks import checker_mask, residual_schedule
from .residual import ResidualLayer, ResidualFlow, ResidualInverseError, residual_flow, residual_terms, family_paths
from .linear_response import LinearResponseFit, linear_response_fit, linear_response_features

# model settings: one dataclass per model kind (constructors, config(), the runner's TOML schema)
from .config import (SpectralFlowConfig, ResidualFlowConfig, PseudofermionFlowConfig, SettingError, FLOW_KINDS,
                     flow_config)

# the conditional pseudofermion model (flows -> fermions; fermions never imports flows)
from .pseudofermion import (PseudofermionFlow, PseudofermionObjective, PFMask, pf_schedule, save_pf_flow,
                            load_pf_flow)


def __getattr__(name):
    # analysis (NumPy/SciPy statistics) is imported only when flows.ess is first used
    if name == "ess":
        from analysis import ess
        return ess
    raise AttributeError(f"module 'flows' has no attribute {name!r}")
