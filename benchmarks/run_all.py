"""Run every benchmark: training speed first (a few minutes), then quality (the long one).

    python -m benchmarks.run_all [--quick] [--profile]

Results: benchmarks/results/train_speed.json and benchmarks/results/quality.json
(--profile also runs train_profile.py: benchmarks/results/train_profile.json).
"""

from __future__ import annotations

import argparse

from benchmarks import quality, train_profile, train_speed


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke-check sizes for both benchmarks")
    ap.add_argument("--profile", action="store_true", help="also run train_profile (a few minutes)")
    a = ap.parse_args(argv)
    extra = ["--quick"] if a.quick else []
    print("### train_speed")
    train_speed.main(extra)
    if a.profile:
        print("### train_profile")
        train_profile.main(extra)
    print("### quality")
    quality.main(extra)


if __name__ == "__main__":
    main()
