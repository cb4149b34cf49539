"""Bootstrap intervals of a Fréchet distance at nightly scale: covariances vs Gram matrices.

FID with 2048-d Inception features and 1,000 generated vs 1,000 reference samples: the direct
route refits two 2048 x 2048 covariances and takes a matrix square root per replicate; the Gram
route (eval.metrics.gram) re-centres 1,000 x 1,000 sub-matrices and takes one SVD. Same draws
(same seed), so the replicate values must agree: the largest relative difference is printed.
Then a paired delta (eval.metrics.paired) of a second variant against the first, as results.json has.

    python -m bench.frechet_bootstrap [--n 1000] [--dim 2048] [--replicates 200] [--direct 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.frechet_bootstrap")
    p.add_argument("--n", type=int, default=1000, help="samples per set")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--replicates", type=int, default=200, help="Gram-route replicates (the default n_boot)")
    p.add_argument("--direct", type=int, default=2, help="direct-route replicates timed (each takes seconds)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy is imported: "on one core" means one thread
    import numpy as np

    from eval.metrics.bootstrap import bootstrap_replicates
    from eval.metrics.frechet import frechet_from_features
    from eval.metrics.gram import GramFrechet, frechet_replicates

    rng = np.random.default_rng(0)
    mix = rng.normal(size=(args.dim, args.dim)) / np.sqrt(args.dim)
    a = np.abs(rng.normal(size=(args.n, args.dim)) @ mix)
    b = np.abs(rng.normal(size=(args.n, args.dim)) @ mix * 1.1) + 0.05

    t = time.perf_counter()
    value = frechet_from_features(a, b)
    t_value = time.perf_counter() - t
    t = time.perf_counter()
    direct = bootstrap_replicates(frechet_from_features, [a, b], args.direct, 0)
    t_direct = (time.perf_counter() - t) / args.direct
    t = time.perf_counter()
    gram = GramFrechet(a, b)
    t_setup = time.perf_counter() - t
    t = time.perf_counter()
    fast = frechet_replicates(a, b, args.replicates, 0)
    t_fast_all = time.perf_counter() - t
    t_fast = t_fast_all / args.replicates
    agree = float(np.max(np.abs(fast[: args.direct] - direct) / np.abs(direct)))
    value_gram = gram.distance()

    # A paired delta (LoRA vs base on the same prompts, one shared reference draw per replicate):
    # two Gram set-ups, two distances per replicate.
    from eval.metrics.paired import FrechetOf, paired_delta
    lora = a + 0.01 * np.abs(rng.normal(size=a.shape))
    rows = np.arange(args.n)
    t = time.perf_counter()
    delta = paired_delta(FrechetOf(lora, b), FrechetOf(a, b), rows, rows, [np.array([i]) for i in rows],
                         n_boot=args.replicates, seed=0)
    t_paired = time.perf_counter() - t

    print(f"command: python -m bench.frechet_bootstrap {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"features: {args.n} vs {args.n} x {args.dim}, {args.threads} thread(s)")
    print("| route | one value s | per replicate s | 200 replicates s |")
    print("|---|---|---|---|")
    print(f"| covariances (direct) | {t_value:.2f} | {t_direct:.2f} | {t_direct * 200:.0f} (extrapolated from {args.direct}) |")
    print(f"| Gram matrices | {t_setup:.2f} (Gram set-up) | {t_fast:.3f} | {t_fast * 200:.1f} (measured {args.replicates}: "
          f"{t_fast_all:.1f}) |")
    print(f"per-replicate speed-up: {t_direct / t_fast:.0f}x; value direct {value:.10f} vs Gram {value_gram:.10f} "
          f"(rel diff {abs(value - value_gram) / value:.1e}); first {args.direct} replicates agree to "
          f"{agree:.1e} relative; replicate median {statistics.median(fast):.4f}")
    print(f"paired delta (variant vs base, {args.n} prompts, shared reference draws), {args.replicates} replicates: "
          f"{t_paired:.1f} s (direct route: ~{2 * t_direct * args.replicates:.0f} s extrapolated); delta "
          f"{delta.value:+.4f} [{delta.ci95[0]:+.4f}, {delta.ci95[1]:+.4f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
