#!/bin/sh
# fdtrace end-to-end smoke set, run by `cargo xtask vm-test` inside each
# guest kernel (and once on the host). Needs only POSIX sh, coreutils and
# Debian's /usr/bin/python3; what each report must contain is in checks.py.
#
# usage: smoke.sh FDTRACE FIXTURES SOURCES OUT
#   FDTRACE   the fdtrace binary to test
#   FIXTURES  directory of C fixtures compiled on the host (see xtask/src/vm)
#   SOURCES   tests/fixtures (Python fixtures, marker lines)
#   OUT       writable directory for reports and fdtrace's stderr
#
# Prints one `PASS name` or `FAIL name: reason` per check, plus
# `INFO key value` lines, and exits 1 if any check failed.
set -u

FDTRACE=$1
FIXTURES=$2
SOURCES=$3
OUT=$4
PY=/usr/bin/python3
HERE=$(dirname "$0")
# No single fdtrace run may hang the guest; xtask's own timeout is the backstop.
RUN_TIMEOUT=${SMOKE_RUN_TIMEOUT:-180}
failed=0
stopped_after=""

pass() { echo "PASS $1"; }
fail() {
    echo "FAIL $1: $2"
    failed=1
}

# The first line of a file (fdtrace's error) and its last lines (e.g. the
# verifier's summary), on one line, for a FAIL reason.
tail_of() {
    if [ "$(wc -l <"$1")" -gt 4 ]; then
        { head -n 1 "$1"; echo "..."; tail -n 3 "$1"; } | tr '\n' ' ' | cut -c1-500
    elif [ -s "$1" ]; then
        tr '\n' ' ' <"$1" | cut -c1-500
    else
        echo "(no output)"
    fi
}

# Processes in state T (stopped), one pid per line.
stopped_pids() {
    "$PY" - <<'EOF'
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        continue
    if state == "T":
        print(pid)
EOF
}

# Records a check after which a process (not stopped before the smoke set
# started) was left stopped, then resumes it so later checks can run.
check_stopped() {
    for pid in $(stopped_pids); do
        case " $stopped_before " in *" $pid "*) continue ;; esac
        stopped_after="$stopped_after $1[$pid]"
        kill -CONT "$pid" 2>/dev/null
        kill -KILL "$pid" 2>/dev/null
    done
}

# trace NAME [FDTRACE RUN ARGS] -- CMD...: runs fdtrace with a JSON report
# at $OUT/NAME.json; returns 1 (after a FAIL line) when there is no report.
trace() {
    name=$1
    shift
    rm -f "$OUT/$name.json"
    timeout -s KILL "$RUN_TIMEOUT" "$FDTRACE" run --format json -o "$OUT/$name.json" "$@" \
        >"$OUT/$name.stdout" 2>"$OUT/$name.stderr"
    code=$?
    check_stopped "$name"
    if [ ! -s "$OUT/$name.json" ]; then
        fail "$name" "no report (exit $code): $(tail_of "$OUT/$name.stderr")"
        return 1
    fi
}

# verdict NAME: runs check NAME of checks.py against $OUT/NAME.json and
# prints PASS, or FAIL with the reason.
verdict() {
    reason=$("$PY" "$HERE/checks.py" "$1" "$OUT/$1.json" "$SOURCES" 2>&1)
    if [ $? -eq 0 ]; then
        pass "$1"
    else
        fail "$1" "$(echo "$reason" | tail -n 3 | tr '\n' ' ' | cut -c1-400)"
    fi
}

# In a guest, /tmp is the host's, over 9p, which has no file handles
# (name_to_handle_at, which the families fixture needs): fixtures get a
# tmpfs of the guest's own as TMPDIR, mounted in the guest only (not over
# /tmp, where the workspace itself may live).
if [ "${SMOKE_GUEST:-}" = 1 ]; then
    mkdir -p "$OUT/tmp" && mount -t tmpfs tmpfs "$OUT/tmp" && export TMPDIR="$OUT/tmp"
fi
if [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null
fi
echo "INFO kernel $(uname -r)"
if [ -e /sys/kernel/btf/vmlinux ]; then
    echo "INFO btf yes"
else
    echo "INFO btf no"
fi
stopped_before=" $(stopped_pids | tr '\n' ' ') "

# load: fdtrace's fixed cost (load, attach, spawn, detach) on /bin/true.
start=$(date +%s.%N)
FDTRACE_LOAD_STATS=1 timeout -s KILL "$RUN_TIMEOUT" "$FDTRACE" run -- /bin/true \
    >"$OUT/load.stdout" 2>"$OUT/load.stderr"
code=$?
end=$(date +%s.%N)
check_stopped load
echo "INFO load_seconds $("$PY" -c "print(f'{$end - $start:.2f}')")"
# "fdtrace: loaded sys_exit: 120710 instructions verified in 71 ms" -> sys_exit=120710
verified=$(sed -n 's/^fdtrace: loaded \([a-z_]*\): \([0-9?]*\) instructions.*/\1=\2/p' \
    "$OUT/load.stderr" | sort | tr '\n' ' ')
echo "INFO verified ${verified% }"
if [ "$code" -eq 0 ]; then
    pass load
else
    fail load "exit $code: $(tail_of "$OUT/load.stderr")"
fi

# c-leak: default stacks name the leaking function and its line.
if trace c-leak -- "$FIXTURES/lifetimes" close_range; then
    verdict c-leak
fi

# stack-fp: frame pointers only; the innermost frame is libc's wrapper.
if trace stack-fp --stack fp -- "$FIXTURES/nofp" direct; then
    verdict stack-fp
fi

# stack-none: leaks still found, with no stacks at all.
if trace stack-none --stack none -- "$FIXTURES/nofp" direct; then
    verdict stack-none
fi

# emfile: the failing call and the stack holding most descriptors.
if trace emfile -- "$FIXTURES/hoard"; then
    verdict emfile
fi

# attach-growth: attach to a running service and see its leak grow.
rm -f "$OUT/attach-growth.json" "$OUT/service.stdout"
"$FIXTURES/service" >"$OUT/service.stdout" &
service=$!
tries=0
until grep -q ready "$OUT/service.stdout" 2>/dev/null || [ $tries -ge 100 ]; do
    sleep 0.1
    tries=$((tries + 1))
done
timeout -s KILL "$RUN_TIMEOUT" "$FDTRACE" attach -p "$service" --format json \
    -o "$OUT/attach-growth.json" --duration 6s --interval 1s --min-age 200ms \
    >"$OUT/attach-growth.stdout" 2>"$OUT/attach-growth.stderr"
code=$?
check_stopped attach-growth
kill -KILL "$service" 2>/dev/null
wait "$service" 2>/dev/null
if [ ! -s "$OUT/attach-growth.json" ]; then
    fail attach-growth "no report (exit $code): $(tail_of "$OUT/attach-growth.stderr")"
else
    # Ten leaks a second for 6 s (the first interval can take seconds to
    # symbolize under TCG); loose bounds, as a guest under TCG is slow.
    verdict attach-growth
fi

# monitor: `monitor --comm` picks up a program that starts after it (the
# kernel traces every exec until fdtrace has looked at it), names the
# leaking site and leaves the churning one at zero; SIGTERM exits 0.
rm -f "$OUT/monitor.metrics"
"$FDTRACE" monitor --comm 'servic?' --listen 127.0.0.1:19464 \
    >"$OUT/monitor.stdout" 2>"$OUT/monitor.stderr" &
monitor=$!
tries=0
until grep -q "metrics on" "$OUT/monitor.stderr" 2>/dev/null || [ $tries -ge 600 ]; do
    sleep 0.1
    tries=$((tries + 1))
done
"$FIXTURES/service" >/dev/null &
service=$!
sleep 6
"$PY" -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen("http://127.0.0.1:19464/metrics", timeout=60).read().decode())' \
    >"$OUT/monitor.metrics" 2>>"$OUT/monitor.stderr"
kill -KILL "$service" 2>/dev/null
wait "$service" 2>/dev/null
kill -TERM "$monitor" 2>/dev/null
wait "$monitor"
code=$?
check_stopped monitor
leaking=$(sed -n 's/^fdtrace_site_open_fds{comm="service",site="leak_one (service.c:[0-9]*)"} \([0-9]*\)$/\1/p' "$OUT/monitor.metrics")
steady=$(sed -n 's/^fdtrace_site_open_fds{comm="service",site="steady (service.c:[0-9]*)"} \([0-9]*\)$/\1/p' "$OUT/monitor.metrics")
if [ "$code" -ne 0 ]; then
    fail monitor "exit $code: $(tail_of "$OUT/monitor.stderr")"
elif [ -z "$leaking" ] || [ "$leaking" -lt 10 ] || [ "$steady" != 0 ]; then
    fail monitor "leak_one=${leaking:-missing} steady=${steady:-missing}: $(grep site_open "$OUT/monitor.metrics" | head -5 | tr '\n' ' ')"
else
    pass monitor
fi

# python-line: a Python leak names its function and line.
if trace python-line -- "$PY" "$SOURCES/pykeep.py"; then
    verdict python-line
fi

# python-shutdown: what only interpreter shutdown closed is a leak; what
# only the garbage collector closed is its own finding.
if trace python-shutdown -- "$PY" "$SOURCES/pyshutdown.py" &&
    trace python-gc -- "$PY" "$SOURCES/pygc.py" &&
    trace python-clean -- "$PY" "$SOURCES/pyclean.py"; then
    verdict python-shutdown
fi

# scm-rights: descriptors received over a unix socket (recvmsg, recvmmsg).
if trace scm-rights -- "$FIXTURES/families" leak; then
    verdict scm-rights
fi

# exec-leak: a pipe without O_CLOEXEC crosses exec into /bin/true.
if trace exec-leak -- "$FIXTURES/leaky"; then
    verdict exec-leak
fi

# handover: of two descriptors crossing exec into a shell, the one it
# reads (the kernel records its first use) is not an exec-leak.
if trace handover -- /bin/sh -c 'exec 3</etc/hostname 4</etc/hostname; exec /bin/sh -c "read x <&3"'; then
    verdict handover
fi

# churn: 8 threads x 3000 open/close, each thread then leaking one fd:
# nothing dropped, exactly 8 leaks.
if trace churn -- "$FIXTURES/churn" 8 3000 leak; then
    verdict churn
fi

# misuse: a double close in a threaded program without frame pointers,
# both closes named; then close(-1) and close(1000) (valgrind's fdbaduse).
if trace misuse -- "$FIXTURES/misuse" threads &&
    trace misuse-double -- "$FIXTURES/misuse" double &&
    trace misuse-invalid -- "$FIXTURES/misuse" invalid; then
    verdict misuse
fi

# no-stopped: no run above left a process in state T.
if [ -z "$stopped_after" ]; then
    pass no-stopped
else
    fail no-stopped "left stopped after:$stopped_after"
fi

exit $failed
