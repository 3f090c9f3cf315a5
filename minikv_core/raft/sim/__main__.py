"""`python -m minikv_core.raft.sim --seeds N --nodes K [--seed S] [--steps M] [--verbose]`.

Runs seeds S .. S+N-1 and prints, for every seed that broke a property, the seed, the property,
the message and the last events of its trace; the last line is always exactly
`seeds=N violations=V` (V = seeds that violated a property). Exit status 1 if V > 0, 2 on bad
usage. `--jobs J` spreads seeds over J processes; the output is identical to `--jobs 1`.
`--joiners-start-empty` / `--joiners-start-bootstrapped` force how added nodes start (by
default each seed chooses).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

from minikv_core.raft.sim import limits
from minikv_core.raft.sim.runner import RunResult, run_seed

_STEPS_DEFAULT = 5_000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minikv_core.raft.sim",
        description="Deterministic simulation of minikv's Raft core under faults.",
    )
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--nodes", type=int, default=3, help="initial voters (1..9)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (reproduce: --seeds 1)")
    parser.add_argument(
        "--steps", type=int, default=_STEPS_DEFAULT, help="events in the fault phase per seed"
    )
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--verbose", action="store_true", help="one summary line per seed")
    joiners = parser.add_mutually_exclusive_group()
    joiners.add_argument(
        "--joiners-start-empty",
        dest="joiners_start_empty",
        action="store_const",
        const=True,
        help="every added node starts with an empty ConfState (default: the seed chooses)",
    )
    joiners.add_argument(
        "--joiners-start-bootstrapped",
        dest="joiners_start_empty",
        action="store_const",
        const=False,
        help="every added node starts with the group's bootstrap ConfState",
    )
    return parser


def _run_one(arguments: tuple[int, int, int, bool | None]) -> RunResult:
    seed, nodes, steps, joiners_start_empty = arguments
    return run_seed(seed, nodes, steps, joiners_start_empty=joiners_start_empty)


def _results(
    seeds: Sequence[int], nodes: int, steps: int, jobs: int, joiners_start_empty: bool | None
) -> Iterator[RunResult]:
    work = [(seed, nodes, steps, joiners_start_empty) for seed in seeds]
    if jobs == 1:
        yield from map(_run_one, work)
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        # map() keeps the seed order, so the output does not depend on scheduling.
        yield from pool.map(_run_one, work, chunksize=8)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)
    if options.seeds < 1:
        parser.error("--seeds must be at least 1")
    if not 1 <= options.nodes <= limits.node_ids_max:
        parser.error(f"--nodes must be in 1..{limits.node_ids_max}")
    if options.steps < 0:
        parser.error("--steps must be >= 0")
    if options.jobs < 1:
        parser.error("--jobs must be at least 1")
    seeds = range(options.seed, options.seed + options.seeds)
    failed = 0
    started = time.monotonic()  # only for the human-readable rate, never inside a run
    joiners = options.joiners_start_empty
    for result in _results(seeds, options.nodes, options.steps, options.jobs, joiners):
        if options.verbose:
            print(result.summary(), flush=True)
        if result.ok:
            continue
        failed += 1
        print(f"=== seed {result.seed} ({result.nodes} nodes) VIOLATED:")
        for violation in result.violations:
            print(f"  {violation.render()}")
        print(f"--- last {limits.trace_events_printed} events of seed {result.seed}:")
        print(result.trace_tail)
        print(
            f"--- reproduce: python -m minikv_core.raft.sim --seeds 1 --seed {result.seed} "
            f"--nodes {result.nodes} --steps {options.steps}"
            + {None: "", True: " --joiners-start-empty", False: " --joiners-start-bootstrapped"}[
                joiners
            ],
            flush=True,
        )
    if options.verbose:
        elapsed_s = time.monotonic() - started
        print(f"# {options.seeds} seeds in {elapsed_s:.1f} s", file=sys.stderr)
    print(f"seeds={options.seeds} violations={failed}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
