"""lorabench.eval: manifests, generation, metrics, reports (may import ``training``)."""
