"""Where a trial's time goes (issue #4): Jacot's circle set-up, width 10000, depth 4, 200 GD
steps, ~20 checkpoints; training time vs NTK work (goal: kernels ≤ 30 % of the trial).

    python benchmarks/bench_trial.py [--device cuda] [--width 10000] [--n 64]
"""

import argparse

from ntksweep.trial import run_trial
from ntksweep.trial_spec import TrialSpec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=int, default=10000)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--checkpoints", type=int, default=20)
    p.add_argument("--n", type=int, default=64, help="training and evaluation points")
    args = p.parse_args()
    spec = TrialSpec(dataset="circle", n_train=args.n, n_eval=args.n, width=args.width,
                     depth=args.depth, bias_std=0.1, lr=1.0, steps=args.steps,
                     checkpoints=args.checkpoints, device=args.device)
    run_trial(spec.replace(steps=2, checkpoints=2))  # warm-up (allocator, kernels, caches)
    r = run_trial(spec)
    assert r.status == "completed", r.error
    k = r.kernel_seconds / r.wall_seconds
    print(f"[{r.device}] circle, width {args.width}, depth {args.depth}, N={args.n}, "
          f"{args.steps} GD steps, {len(r.records)} checkpoints")
    print(f"  wall {r.wall_seconds:.2f} s = training {r.train_seconds:.2f} s "
          f"+ kernel work {r.kernel_seconds:.2f} s + setup "
          f"{r.wall_seconds - r.train_seconds - r.kernel_seconds:.2f} s")
    print(f"  kernel work is {100 * k:.1f} % of the trial (goal ≤ 30 %)")
    print(f"  final dist_inf {r.final['dist_inf']:.4f}, dist_init {r.final['dist_init']:.5f}")


if __name__ == "__main__":
    main()
