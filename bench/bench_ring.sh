#!/usr/bin/env bash
# bench/run-all runs this instead of the binary: the ring benchmark needs
# mpirun. One job on $BENCH_RING_RANKS ranks (default 2, one per core here)
# measures the 1-rank baseline and the multi-rank runs itself, so every
# ratio it prints comes from one run. Arguments go to bench_ring.
set -eu
cd "$(dirname "$0")/.."
build=${BUILD:-build}
exec launch/mattn-mpirun -np "${BENCH_RING_RANKS:-2}" "$build/bench/bench_ring" "$@"
