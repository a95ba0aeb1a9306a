"""Run the benchmarks: training speed first (a few minutes), then quality (the long one); with --all also the
prompt-table latency, serving, Ray overhead and search benchmarks (each alone on the machine: they time work).

    python -m benchmarks.run_all [--quick] [--profile] [--all]

Results under benchmarks/results/: train_speed.json and quality.json (--profile: train_profile.json; --all:
table_latency.json, serve_bench.json, ray_overhead.json, search_bench.json). Each benchmark also runs alone:
`python -m benchmarks.<name> --help`; bf16_fidelity and quality_seeds are analyses run by hand (README.md).
"""

from __future__ import annotations

import argparse

from benchmarks import quality, train_profile, train_speed


def _service_benchmarks(quick: bool) -> None:
    from benchmarks import ray_overhead, search_bench, serve_bench, table_latency

    extra = ["--quick"] if quick else []
    print("### table_latency")
    table_latency.main(["--sizes", "1,100", "--repeats", "5"] if quick else [])
    print("### serve_bench")
    serve_bench.main(extra)
    print("### ray_overhead")
    ray_overhead.main(extra)
    print("### search_bench")
    search_bench.main(extra)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke-check sizes for every benchmark run")
    ap.add_argument("--profile", action="store_true", help="also run train_profile (a few minutes)")
    ap.add_argument("--all", action="store_true", help="also the table, serving, Ray overhead and search ones")
    a = ap.parse_args(argv)
    extra = ["--quick"] if a.quick else []
    print("### train_speed")
    train_speed.main(extra)
    if a.profile:
        print("### train_profile")
        train_profile.main(extra)
    print("### quality")
    quality.main(extra)
    if a.all:
        _service_benchmarks(a.quick)


if __name__ == "__main__":
    main()
