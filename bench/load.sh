#!/usr/bin/env bash
# Runs a command (a harness run, a measuring script) while the machine is loaded, then ends the
# load it started, by pid.
#
#   bench/load.sh [--hog] [--churn] -- COMMAND [ARG...]
#
#   --hog    one busy loop per online CPU (`nproc`), at the default nice level
#   --churn  one loop that keeps creating short-lived processes (`/bin/true`, one after the
#            other): pids are handed out all the time, as on a host running builds or tests
#
# With neither option the command runs on a quiet machine, so that one script runs every
# condition. The load starts one second before the command and ends when it ends; the exit status
# is the command's.
set -u
hog=0 churn=0
while [ $# -gt 0 ]; do
    case "$1" in
    --hog) hog=1 ;;
    --churn) churn=1 ;;
    --) shift; break ;;
    *) echo "load.sh: unknown option $1 (usage: load.sh [--hog] [--churn] -- COMMAND...)" >&2; exit 2 ;;
    esac
    shift
done
[ $# -gt 0 ] || { echo "load.sh: no command (usage: load.sh [--hog] [--churn] -- COMMAND...)" >&2; exit 2; }

pids=()
stop_load() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    pids=()
}
trap 'stop_load; exit 130' INT TERM
if [ "$hog" = 1 ]; then
    for _ in $(seq 1 "$(nproc)"); do
        (while :; do :; done) &
        pids+=($!)
    done
fi
if [ "$churn" = 1 ]; then
    (while :; do /bin/true; done) &
    pids+=($!)
fi
[ ${#pids[@]} -gt 0 ] && sleep 1
"$@"
rc=$?
stop_load
exit $rc
