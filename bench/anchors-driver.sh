#!/usr/bin/env bash
# sheepdog driver for the anchor benchmark harness (bench.py; protocol in its README.md),
# modelled on its drivers/cbase.sh. It runs examples/bench_driver.rs, a foreground host of
# one sheepdog Supervisor:
#   prepare  writes $BENCH_DIR/services.tsv (N, restart|never, argv) and nothing else
#   start    launches bench_driver in its own session; it opens $BENCH_DIR/state and
#            starts t0000.. one Supervisor::start call at a time
#   stop     SIGTERM to bench_driver: stop("all") (SIGTERM to every process group), then
#            shutdown(), then it exits
#   logpaths $BENCH_DIR/state/logs/t0000.out.log
# Build first: cargo build --release --example bench_driver (in the repo root).
# SHEEPDOG_ROOT (default: this script's repo) locates target/release/examples/bench_driver;
# SHEEPDOG_BIN overrides the binary itself (e.g. a copy that a rebuild cannot replace).
# SHEEPDOG_CONTAINMENT (auto, cgroup or process-group; default auto) picks the containment;
# anchors-driver-pg.sh is this driver with process-group containment, as its own tool.
# SHEEPDOG_WARM=1 (anchors-driver-warm.sh, anchors-driver-pg-warm.sh) is the warm path:
#   prepare  also launches bench_driver --warm $BENCH_DIR/go (a FIFO) and waits until its
#            Supervisor is open (untimed)
#   start    writes to the FIFO: the running supervisor starts the fleet (start_many)
. "${BENCH_HOME:?run me from bench.py, which sets BENCH_HOME}/drivers/lib.sh"
SHEEPDOG_ROOT=${SHEEPDOG_ROOT:-$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)}
BIN=${SHEEPDOG_BIN:-$SHEEPDOG_ROOT/target/release/examples/bench_driver}

case "$1" in
prepare)
    scenario=$2 n=$3 arg=${4:-}
    [ -x "$BIN" ] || { echo "sheepdog: $BIN missing (cargo build --release --example bench_driver)" >&2; exit 1; }
    policy=restart; [ "$scenario" = log ] && policy=never
    line="$n	$policy	$TICK	$scenario	$TICK_FILE"
    [ -n "$arg" ] && line="$line	$arg"
    printf '%s\n' "$line" > "$BENCH_DIR/services.tsv"
    if [ "${SHEEPDOG_WARM:-0}" = 1 ]; then
        mkfifo -m 600 "$BENCH_DIR/go"
        launch_bg sheepdog "$BIN" --services "$BENCH_DIR/services.tsv" --state "$BENCH_DIR/state" \
            --containment "${SHEEPDOG_CONTAINMENT:-auto}" --warm "$BENCH_DIR/go"
        for _ in $(seq 1 400); do
            grep -q '^bench_driver: open$' "$BENCH_DIR/sheepdog.out" 2>/dev/null && exit 0
            alive "$(cat "$BENCH_DIR/sheepdog.pid")" || break
            sleep 0.05
        done
        echo "sheepdog: bench_driver did not open its supervisor within 20 s" >&2
        exit 1
    fi
    ;;
start)
    if [ "${SHEEPDOG_WARM:-0}" = 1 ]; then
        printf 'go\n' > "$BENCH_DIR/go"
    else
        launch_bg sheepdog "$BIN" --services "$BENCH_DIR/services.tsv" --state "$BENCH_DIR/state" \
            --containment "${SHEEPDOG_CONTAINMENT:-auto}"
    fi
    ;;
pids)
    cat "$BENCH_DIR/sheepdog.pid" 2>/dev/null
    ;;
stop)
    kill -TERM "$(cat "$BENCH_DIR/sheepdog.pid")"
    ;;
logpaths)
    echo "$BENCH_DIR/state/logs/t0000.out.log"
    ;;
teardown)
    pid=$(cat "$BENCH_DIR/sheepdog.pid" 2>/dev/null)
    if alive "$pid"; then
        kill -TERM "$pid"
        # children die with it (PR_SET_PDEATHSIG) if it has to be killed
        wait_gone "$pid" 20 || kill -KILL "$pid" 2>/dev/null
    fi
    ;;
*) echo "anchors-driver.sh: unknown command ${1:-}" >&2; exit 2 ;;
esac
