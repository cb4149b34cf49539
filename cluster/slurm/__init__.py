"""SLURM wrappers: an sbatch script that starts Ray on the allocation (or torchrun), runs the
driver on the first node, survives the time limit by checkpoint-and-requeue, and cleans up.

- :mod:`.render`: the request, its checks against the run config and the cluster, the script;
- :mod:`.node`: what each node runs (Ray head on SLURM_NODEID 0, workers elsewhere);
- :mod:`.wait`: the bounded wait until every node and GPU has joined;
- ``job-ray.sbatch`` / ``job-torchrun.sbatch``: the templates.
"""
