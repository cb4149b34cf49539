"""lorabench.cluster: Ray/SLURM drivers and the ``lorabench`` command line (top of the import graph)."""
