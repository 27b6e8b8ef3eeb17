"""gaugeflow.run: the `gaugeflow` command line (also `python -m run`), TOML job configurations
and one job per command (:mod:`run.jobs`). It wires the physics of :mod:`lattice`,
:mod:`fermions` and :mod:`flows` and the statistics of :mod:`analysis` together; nothing in
those packages imports it."""
