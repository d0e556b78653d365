"""Assertions on fdtrace's JSON reports for the VM smoke set (smoke.sh).

usage: checks.py NAME REPORT.json SOURCES

Exits 0 when report NAME holds what that check expects; otherwise prints
why and exits 1. The expectations mirror the end-to-end tests in tests/tests
(which assert more; these are the few facts that prove a kernel works).
"""

import json
import sys


class Report:
    def __init__(self, path, sources):
        with open(path) as f:
            self.r = json.load(f)
        self.path = path
        self.sources = sources

    def frames(self, stack_id):
        for group in self.r["groups"]:
            if group["stack_id"] == stack_id:
                return group["stack"]
        return []

    def functions(self, stack_id):
        return [f.get("function") for f in self.frames(stack_id)]

    def leaks_from(self, function):
        return [l for l in self.r["leaks"] if function in self.functions(l["stack_id"])]

    def line_of(self, source, marker):
        with open(f"{self.sources}/{source}") as f:
            return next(i + 1 for i, line in enumerate(f) if marker in line)


def check(condition, why):
    if not condition:
        print(why)
        sys.exit(1)


def c_leak(t):
    """Default stacks name the leaking function and its line (lifetimes.rs)."""
    leaks = t.r["leaks"]
    check(len(leaks) == 1, f"expected 1 leak, got {len(leaks)}")
    leak = leaks[0]
    # Not the fd number: a guest's shell may hand the fixture extra descriptors.
    check(leak["target"] == "/etc/passwd", f"leak: {leak}")
    named = [f for f in t.frames(leak["stack_id"]) if f.get("function") == "close_range_all"]
    check(named, f"close_range_all not in stack: {t.functions(leak['stack_id'])}")
    want = t.line_of("lifetimes.c", "LEAK:close_range")
    check(named[0].get("line") == want, f"line {named[0].get('line')}, expected {want}")


def stack_fp(t):
    """Frame pointers alone stop at libc's wrapper (stacks.rs)."""
    leaks = t.r["leaks"]
    check(len(leaks) == 1, f"expected 1 leak, got {len(leaks)}")
    functions = t.functions(leaks[0]["stack_id"])
    check(functions and "open" in (functions[0] or ""), f"innermost is not open: {functions}")


def stack_none(t):
    """Leaks are still found, with no stacks at all (stacks.rs)."""
    leaks = t.r["leaks"]
    check(len(leaks) == 1, f"expected 1 leak, got {len(leaks)}")
    check(leaks[0]["stack_id"] is None, f"stack_id {leaks[0]['stack_id']}")
    check(t.r["groups"] == [], f"groups: {t.r['groups']}")


def emfile(t):
    """The failing call and the stack holding most descriptors (attach.rs)."""
    records = t.r["emfile"]
    check(len(records) == 1, f"expected 1 EMFILE record, got {records}")
    e = records[0]
    check((e["syscall"], e["error"]) == ("openat", "EMFILE"), f"{e['syscall']} {e['error']}")
    check(e["rlimit"] == [64, 64], f"rlimit {e['rlimit']}")
    failing = t.functions(e["stack_id"])
    check("fail_to_open" in failing, f"failing stack: {failing}")
    check(e["holders"], "no holders")
    top = e["holders"][0]
    check(top["count"] == 60, f"top holder: {top}")
    check("hoard" in t.functions(top["stack_id"]), f"holder: {t.functions(top['stack_id'])}")


def attach_growth(t):
    """Attach sees one stack grow, ten a second (attach.rs). No upper bound
    on the count: under TCG, attaching takes seconds while the service runs."""
    check(t.r["mode"] == "attach", f"mode {t.r['mode']}")
    leaks = t.leaks_from("leak_one")
    check(len(leaks) >= 10, f"{len(leaks)} leaks from leak_one")
    others = len(t.r["leaks"]) - len(leaks)
    check(others == 0, f"{others} leaks not from leak_one")
    check(not t.leaks_from("steady"), "steady() reported as leaking")
    intervals = t.r["intervals"]
    check(len(intervals) >= 2, f"{len(intervals)} intervals")
    growth = [i["groups"][0].get("growth", 0) for i in intervals[1:] if i["groups"]]
    check(growth and all(g > 0 for g in growth), f"growth per interval: {growth}")


def python_line(t):
    """A Python leak names its function and line (python.rs)."""
    leaks = t.r["leaks"]
    check(len(leaks) == 3, f"expected 3 leaks, got {len(leaks)}")
    want = t.line_of("pykeep.py", "LEAK-FILL")
    for leak in leaks:
        py = [f for f in t.frames(leak["stack_id"]) if f.get("lang") == "python"]
        check(py, f"no Python frames: {t.functions(leak['stack_id'])}")
        got = (py[0]["function"], py[0]["line"])
        check(got[0].endswith("fill") and got[1] == want, f"innermost Python frame {got}, expected fill:{want}")


def python_shutdown(t):
    """Closes by CPython's shutdown and collector (python_shutdown.rs)."""
    leaks = t.r["leaks"]
    check(len(leaks) == 6, f"expected 6 leaks, got {len(leaks)}")
    check(all(l["closed_at_shutdown"] for l in leaks), f"not all closed at shutdown: {leaks}")
    with open(t.path.replace("python-shutdown.json", "python-gc.json")) as f:
        gc = json.load(f)
    check(gc["leaks"] == [], f"pygc.py leaks: {gc['leaks']}")
    # The guest may hand Python more descriptors than fds 0-2: no fd number.
    closed = [(g["kind"], g["target"]) for g in gc["gc_closed"]]
    check(closed == [("socket", "inet udp")], f"gc_closed: {closed}")
    with open(t.path.replace("python-shutdown.json", "python-clean.json")) as f:
        clean = json.load(f)
    check(clean["leaks"] == [] and clean["gc_closed"] == [], f"pyclean.py: {clean['leaks']} {clean['gc_closed']}")


def scm_rights(t):
    """Descriptors received over a unix socket (families.rs)."""
    for function, syscall in (("make_recvmsg", "recvmsg"), ("make_recvmmsg", "recvmmsg")):
        got = t.leaks_from(function)
        check(len(got) == 1, f"{function}: {len(got)} leaks")
        check(
            (got[0]["opened_by"], got[0]["target"]) == (syscall, "/etc/hostname"),
            f"{function}: {got[0]['opened_by']} {got[0]['target']}",
        )


def exec_leak(t):
    """A pipe without O_CLOEXEC crosses exec (examples/leaky.c)."""
    pipes = [x for x in t.r["exec_leaks"] if x["kind"] == "pipe" and x["exec"] == "/bin/true"]
    check(len(pipes) == 2, f"expected 2 pipe ends crossing exec, got {t.r['exec_leaks']}")
    check("start_helper" in t.functions(pipes[0]["stack_id"]), f"stack: {t.functions(pipes[0]['stack_id'])}")


def handover(t):
    """Of fds 3 and 4 crossing exec into sh, only the unread 4 is an exec-leak."""
    fds = sorted(x["fd"] for x in t.r["exec_leaks"])
    check(fds == [4], f"expected exec-leak of fd 4 only, got {t.r['exec_leaks']}")


def churn(t):
    """8 threads x 3000 open/close, then one leak each."""
    check(t.r["dropped_events"] == 0, f"dropped {t.r['dropped_events']}")
    check(t.r["unknown_leaks"] == [], f"unknown: {t.r['unknown_leaks']}")
    leaks = [x for x in t.r["leaks"] if x["target"] == "/etc/hostname"]
    check(len(t.r["leaks"]) == 8 and len(leaks) == 8, f"leaks: {t.r['leaks']}")


def misuse(t):
    """Both stacks of a use after close and a double close; invalid fds (misuse.rs)."""
    def one(report, kind, syscall, fail_in, closed_in):
        found = report.r["fd_misuse"]
        check(len(found) == 1, f"{kind}: expected 1 misuse, got {found}")
        m = found[0]
        check((m["type"], m["syscall"]) == (kind, syscall), f"misuse: {m}")
        check(fail_in in report.functions(m["stack_id"]),
              f"{fail_in} not in {report.functions(m['stack_id'])}")
        check(closed_in in report.functions(m["closed_stack_id"]),
              f"{closed_in} not in {report.functions(m['closed_stack_id'])}")

    one(t, "use-after-close", "read", "b_read", "a_second_close")
    base = t.path.rsplit("/", 1)[0]
    one(Report(f"{base}/misuse-double.json", t.sources), "double-close", "close",
        "second_close", "first_close")
    invalid = Report(f"{base}/misuse-invalid.json", t.sources).r["fd_misuse"]
    got = sorted((m["type"], m["fd"]) for m in invalid)
    check(got == [("invalid-fd", -1), ("invalid-fd", 1000)], f"invalid: {invalid}")


CHECKS = {
    "c-leak": c_leak,
    "stack-fp": stack_fp,
    "stack-none": stack_none,
    "emfile": emfile,
    "attach-growth": attach_growth,
    "python-line": python_line,
    "python-shutdown": python_shutdown,
    "scm-rights": scm_rights,
    "exec-leak": exec_leak,
    "handover": handover,
    "churn": churn,
    "misuse": misuse,
}

if __name__ == "__main__":
    name, report, sources = sys.argv[1:4]
    CHECKS[name](Report(report, sources))
