"""MPI tests: run with ``mpiexec -n R python -m pytest -m mpi tests/mpi`` (R = 2, 4)."""
