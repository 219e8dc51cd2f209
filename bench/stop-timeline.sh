#!/usr/bin/env bash
# The timeline of one stop-all of N idle children, outside the anchor harness (whose own loop
# reads /proc for every child during the stop): kernel tracepoints, recorded with `perf`
# across the whole machine, give the time of every stop signal the supervisor sends, of every
# child's exit and of every reap, from the SIGTERM that asks for the stop.
#
#   bench/stop-timeline.sh cbase|sheepdog [auto|cgroup|process-group] [N]
#
# Prints one line: the last stop signal, the last child's exit, the first and the N-th reap,
# in ms after the SIGTERM. Needs root (or perf_event_paranoid -1) and `perf`; the anchors
# built (`tick`, and `minisup` for cbase) in ANCHORS (default ../shared/bench/anchors, from
# the repository); SHEEPDOG_BIN (default target/release/examples/bench_driver) for sheepdog.
# Run it several times, tools in turns, and take medians: one stop varies by 20 % or more.
set -euo pipefail
who=${1:?usage: stop-timeline.sh cbase|sheepdog [containment] [N]}
containment=${2:-auto}
n=${3:-1000}
repo=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
anchors=${ANCHORS:-$repo/../shared/bench/anchors}
tick=$anchors/build/tick
bin=${SHEEPDOG_BIN:-$repo/target/release/examples/bench_driver}
[ -x "$tick" ] || { echo "stop-timeline: $tick missing (run the anchors' build.sh)" >&2; exit 1; }
command -v perf > /dev/null || { echo "stop-timeline: perf missing" >&2; exit 1; }

dir=$(mktemp -d)
host=
cleanup() {
    if [ -n "$host" ] && kill -0 "$host" 2> /dev/null; then kill -KILL "$host"; fi
    rm -rf "$dir"
}
trap cleanup EXIT
case "$who" in
cbase)
    mkdir "$dir/logs"
    setsid "$anchors/build/minisup" -n "$n" -r -1 -L "$dir/logs" -- "$tick" idle "$dir/ticks" \
        > "$dir/out" 2>&1 < /dev/null &
    ;;
sheepdog)
    [ -x "$bin" ] || { echo "stop-timeline: $bin missing (cargo build --release --example bench_driver)" >&2; exit 1; }
    printf '%s\trestart\t%s\tidle\t%s\n' "$n" "$tick" "$dir/ticks" > "$dir/services.tsv"
    setsid "$bin" --services "$dir/services.tsv" --state "$dir/state" \
        --containment "$containment" > "$dir/out" 2>&1 < /dev/null &
    ;;
*) echo "stop-timeline: cbase or sheepdog, not $who" >&2; exit 2 ;;
esac
host=$!
for _ in $(seq 1 400); do
    started=$(grep -c start "$dir/ticks" 2> /dev/null || true)
    [ "${started:-0}" -ge "$n" ] && break
    sleep 0.05
done
[ "${started:-0}" -ge "$n" ] || { echo "stop-timeline: only ${started:-0} of $n children started" >&2; exit 1; }
sleep 1
events=syscalls:sys_enter_kill,syscalls:sys_enter_pidfd_send_signal,sched:sched_process_exit
events=$events,syscalls:sys_exit_waitid,syscalls:sys_exit_wait4
perf record -q -a -e "$events" -o "$dir/perf.data" -- sleep 1.2 > /dev/null 2>&1 &
recorder=$!
sleep 0.4
# The stop: this shell's own kill(2) is time zero.
kill -TERM "$host"
wait "$host" || true
host=
wait "$recorder"
perf script -i "$dir/perf.data" -F comm,pid,time,event,trace 2> /dev/null > "$dir/trace.txt"
python3 - "$dir/trace.txt" "$$" "$n" <<'PY'
import re
import sys

path, me, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = []
for line in open(path):
    m = re.match(r"\s*(\S+)\s+(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)", line)
    if m:
        comm, pid, t, event, rest = m.groups()
        rows.append((float(t), comm, int(pid), event, rest))
zero = min(t for t, _, pid, e, rest in rows
           if pid == me and e == "syscalls:sys_enter_kill" and rest.endswith("0x0000000f"))
ms = lambda t: (t - zero) * 1e3
signals = sorted(t for t, _, pid, e, rest in rows if pid != me and t >= zero and (
    e == "syscalls:sys_enter_kill" or
    (e == "syscalls:sys_enter_pidfd_send_signal" and "sig: 0x0000000f" in rest)))
exits = sorted(t for t, _, _, e, rest in rows
               if e == "sched:sched_process_exit" and "comm=tick" in rest and t >= zero)
reaps = sorted(t for t, _, pid, e, _ in rows
               if pid != me and t >= zero and e in ("syscalls:sys_exit_waitid", "syscalls:sys_exit_wait4"))
if len(exits) < n or len(reaps) < n:
    sys.exit(f"stop-timeline: {len(exits)} exits and {len(reaps)} reaps traced, {n} expected")
print(f"last signal {ms(signals[-1]):.1f} ms, last exit {ms(exits[-1]):.1f} ms, "
      f"first reap {ms(reaps[0]):.1f} ms, reap {n} {ms(reaps[n - 1]):.1f} ms")
PY
