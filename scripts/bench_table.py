#!/usr/bin/env python3
"""Writes the standard-set results table of `make bench` into BENCHMARKS.md.

    scripts/bench_table.py RESULTS_DIR [--write BENCHMARKS.md]

RESULTS_DIR is what scripts/bench.sh leaves: meta.json (date, machine, node commit) and, per
scenario NAME (fanout, ramp, rooms, connect, idle), NAME.json (the generator's --json lines:
one per protocol run, each naming its `protocol`, `json` when it names none), NAME.cmd (the
command) and NAME.rc (its exit status). Fanout, rooms and idle have a row for each protocol, the
Pusher rows right after the native ones. Prints the Markdown section; with
--write, puts it between the `<!-- bench:standard:begin -->` and `<!-- bench:standard:end -->`
markers of the file (creating the section before the first `## ` heading if the markers are
missing). `python3 scripts/bench_table.py --self-test` checks the formatting rules.
"""

import json
import os
import sys

BEGIN = "<!-- bench:standard:begin -->"
END = "<!-- bench:standard:end -->"


def load(results, name, protocol="json"):
    """(report or None, command, exit status) of one scenario's last run on `protocol`."""
    def read(ext):
        try:
            with open(os.path.join(results, f"{name}.{ext}"), encoding="utf-8") as f:
                return f.read().strip()
        except FileNotFoundError:
            return None
    text, cmd, rc = read("json"), read("cmd"), read("rc")
    report = None
    for line in (text or "").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and r.get("protocol", "json") == protocol:
            report = r
    return report, cmd or "-", int(rc) if rc not in (None, "") else None


def num(v, digits=0):
    """1234567.8 -> '1,234,568'; with digits, fixed decimals."""
    return f"{v:,.{digits}f}"


def problem(report, rc):
    """Why a scenario's figures cannot count, or None."""
    if report is None:
        return "could not run" + (f" (exit {rc})" if rc is not None else "")
    if not report.get("ok", False):
        return "run failed: " + "; ".join(report.get("failures", [])[:2])
    return None


def row(measure, target, measured, met, cmd):
    return f"| {measure} | {target} | {measured} | {met} | `{cmd}` |"


PUSHER = " (Pusher protocol)"


def fanout_rows(report, cmd, rc, label=""):
    measures = (
        "node CPU per delivery: fanout, 1,000 subscribers over 2 nodes, 64-byte payloads" + label,
        "p99 latency, same fanout at 50,000 deliveries/s" + label,
    )
    targets = ("≤ 2 µs", "≤ 5 ms")
    bad = problem(report, rc)
    if bad:
        return [row(m, t, bad, "no", cmd) for m, t in zip(measures, targets)]
    cpu = report.get("nodes_cpu_us_per_delivery")
    lat = report["latency_ms"]
    rate = f"{num(report['deliveries_per_sec'])} deliveries/s, 0 lost / dup / out of order"
    cpu_text = (f"{cpu:.2f} µs{cpu_split(report)} (both nodes; {rate})" if cpu is not None
                else "no --node-pid")
    return [
        row(measures[0], targets[0], cpu_text, yes(cpu is not None and cpu <= 2.0), cmd),
        row(measures[1], targets[1],
            f"{lat['p99']:.2f} ms (p50 {lat['p50']:.2f}, p99.9 {lat['p99_9']:.2f}, "
            f"max {lat['max']:.2f} ms{node_p99(report.get('node_latency'))}; {rate})",
            yes(lat["p99"] <= 5.0), cmd),
    ]


def cpu_split(report, user="nodes_user_us_per_delivery", kernel="nodes_kernel_us_per_delivery",
              digits=2):
    """' = user 0.71 + kernel 6.31' when the report has the split, else ''."""
    u, k = report.get(user), report.get(kernel)
    if u is None or k is None:
        return ""
    return f" = user {u:.{digits}f} + kernel {k:.{digits}f}"


def bound_ms(v):
    """2.5 -> '2.5', 10000.0 -> '10000', 0.25 -> '0.25'."""
    return f"{v:.3f}".rstrip("0").rstrip(".")


def node_p99(node_latency):
    """'; node-side p99 ≤ 5 ms' from the nodes' histograms, when the report has it."""
    n = node_latency or {}
    if n.get("p99_le_ms") is not None:
        return f"; node-side p99 ≤ {bound_ms(n['p99_le_ms'])} ms"
    if n.get("p99_above_ms") is not None:
        return f"; node-side p99 > {bound_ms(n['p99_above_ms'])} ms"
    return ""


def ramp_row(report, cmd, rc):
    measure = "highest sustained deliveries/s with zero loss and p99 < 100 ms, same fanout"
    target = "limited by the load generator, not the nodes"
    if report is None or report.get("highest_clean") is None:
        why = problem(report, rc) or "no clean step"
        return row(measure, target, why, "no", cmd)
    best = report["highest_clean"]
    limit = report.get("first_unclean") or report["steps"][-1]
    threads = limit["report"].get("runtime_threads", 1)
    gen, nodes = limit.get("generator_cores"), limit.get("nodes_cores")
    bound = gen is not None and gen >= 0.85 * threads
    where = ("next step" if report.get("first_unclean") else "last step") + f" {num(limit['rate'])}/s"
    measured = (
        f"{num(best['deliveries_per_sec'])} deliveries/s ({num(best['rate'])} publishes/s, "
        f"p99 {best['p99_ms']:.2f} ms{node_p99(best.get('node_latency'))}); {where}: {limit['verdict']}; there the generator used "
        f"{fmt(gen)} of {threads} core(s), the nodes {fmt(nodes)}"
    )
    if not report.get("ok", False):
        return row(measure, target, measured + "; " + problem(report, rc), "no", cmd)
    return row(measure, target, measured, yes(bound), cmd)


def pusher_cpu_row(scenario, pusher, native, cmd, rc):
    """The Pusher run's node CPU per delivery against the native run's of the same nodes."""
    measure = f"node CPU per delivery, Pusher against native: {scenario}, the same nodes and rate"
    target = "≤ 1.2 × native"
    bad = problem(pusher, rc) or (problem(native, rc) and "no clean native run")
    if bad:
        return row(measure, target, bad, "no", cmd)
    p, n = pusher.get("nodes_cpu_us_per_delivery"), native.get("nodes_cpu_us_per_delivery")
    if p is None or n is None or n <= 0:
        return row(measure, target, "no --node-pid", "no", cmd)
    measured = (
        f"{p / n:.2f} × ({p:.2f} µs{cpu_split(pusher)} against {n:.2f} µs{cpu_split(native)}; "
        f"user part {ratio(pusher.get('nodes_user_us_per_delivery'), native.get('nodes_user_us_per_delivery'))})"
    )
    return row(measure, target, measured, yes(p <= 1.2 * n), cmd)


def ratio(a, b):
    """'1.31 ×', or '-' when either is missing."""
    return "-" if a is None or not b else f"{a / b:.2f} ×"


def rooms_row(report, cmd, rc, label=""):
    measure = "p99 latency, rooms: 1,000 channels × 5 subscribers, 2,000 publishes/s" + label
    bad = problem(report, rc)
    if bad:
        return row(measure, "≤ 2 ms", bad, "no", cmd)
    lat = report["latency_ms"]
    cpu = report.get("nodes_cpu_us_per_delivery")
    measured = (
        f"{lat['p99']:.2f} ms (p50 {lat['p50']:.2f}, p99.9 {lat['p99_9']:.2f}, max {lat['max']:.2f} ms"
        f"{node_p99(report.get('node_latency'))}; {num(report['deliveries_per_sec'])} deliveries/s, "
        f"node CPU {fmt(cpu)} µs{cpu_split(report)} per delivery)"
    )
    return row(measure, "≤ 2 ms", measured, yes(lat["p99"] <= 2.0), cmd)


def idle_row(report, cmd, rc, label=""):
    measure = "RSS per idle subscribed connection, 10,000 connections on one node" + label
    bad = problem(report, rc)
    if bad:
        return row(measure, "≤ 4 KiB", bad, "no", cmd)
    per = report.get("rss_per_connection_kb")
    node = report.get("node") or {}
    if per is None:
        return row(measure, "≤ 4 KiB", "no node memory figures", "no", cmd)
    measured = (
        f"{per:.2f} KiB (RSS {node['rss_before_kb'] / 1024:.1f} → {node['rss_after_kb'] / 1024:.1f} MiB "
        f"for {num(report['connected'])} connections on {report['channels']} channels, held "
        f"{report['hold_secs']:.0f} s, {report['disconnects']} disconnects; opened at "
        f"{num(report['connections_per_sec'])}/s, node CPU {fmt(report.get('cpu_us_per_connection'), 1)} µs"
        f"{cpu_split(report, 'user_us_per_connection', 'kernel_us_per_connection', 1)} each)"
    )
    return row(measure, "≤ 4 KiB", measured, yes(per <= 4.0), cmd)


def connect_row(report, cmd, rc):
    measure = "new connections per second on one node"
    target = "≥ 10,000, or the load generator's limit; node CPU per accepted connection reported"
    bad = problem(report, rc)
    if bad:
        return row(measure, target, bad, "no", cmd)
    rate = report["connections_per_sec"]
    measured = (
        f"{num(rate)}/s ({num(report['connected'])} connections, upgrade + welcome + close; "
        f"handshake p50 {report['handshake_ms']['p50']:.2f} / p99 {report['handshake_ms']['p99']:.2f} ms); "
        f"node CPU {fmt(report.get('node_cpu_us_per_connection'), 1)} µs"
        f"{cpu_split(report, 'node_user_us_per_connection', 'node_kernel_us_per_connection', 1)} "
        "per accepted connection; "
        f"generator {fmt(report.get('generator_cores'))} of {report.get('runtime_threads', 1)} core(s)"
    )
    return row(measure, target, measured, yes(rate >= 10_000 or report.get("generator_bound")), cmd)


def fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


def yes(ok):
    return "yes" if ok else "no"


def section(results):
    with open(os.path.join(results, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    fanout = load(results, "fanout")
    fanout_p = load(results, "fanout", "pusher")
    rooms = load(results, "rooms")
    rooms_p = load(results, "rooms", "pusher")
    lines = [
        BEGIN,
        "",
        f"{meta['date']}: {meta['nproc']} cores, kernel {meta['kernel']}, redis-server "
        f"{meta['redis']}; node binary built from commit {meta['node_commit']}. Written by "
        "`make bench` (`scripts/bench.sh`, then `scripts/bench_table.py`); do not edit between "
        "the markers.",
        "",
        "| measure | target | measured | met? | command |",
        "|---|---|---|---|---|",
        *fanout_rows(*fanout),
        *fanout_rows(*fanout_p, label=PUSHER),
        pusher_cpu_row("fanout", fanout_p[0], fanout[0], *fanout_p[1:]),
        ramp_row(*load(results, "ramp")),
        rooms_row(*rooms),
        rooms_row(*rooms_p, label=PUSHER),
        pusher_cpu_row("rooms", rooms_p[0], rooms[0], *rooms_p[1:]),
        idle_row(*load(results, "idle")),
        idle_row(*load(results, "idle", "pusher"), label=PUSHER),
        connect_row(*load(results, "connect")),
        "",
        "A figure counts only from a clean run (no loss, duplicate, out-of-order delivery, "
        "disconnect or error). The highest sustained rate is met when, at the step that ended "
        "the ramp, the generator used at least 0.85 of each of its runtime threads (then it, "
        "not the nodes, was the limit); new connections per second likewise. CPU figures are "
        "read from `/proc/PID/stat` for the nodes' pids, in 10 ms ticks, split into user and "
        "kernel time (on loopback the kernel part includes the clients' side of TCP, which a "
        "real network would put on other hosts). The node-side p99 is the upper bound of the "
        "bucket of the nodes' `switchboard_delivery_latency_seconds` histograms that holds it "
        "(publish to socket write, without the generator's own queueing). The Pusher rows are "
        "the same scenarios with the subscribers on the Pusher endpoint (`/app/{key}`, "
        "`pusher:subscribe`), run right after the native ones on the same nodes (idle: on a "
        "fresh node), the API publishing to the app's channels.",
        "",
        END,
    ]
    return "\n".join(lines) + "\n"


def write(path, text):
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        doc = head + text.rstrip("\n") + tail
    else:
        block = "## Standard set (make bench)\n\n" + text + "\n"
        at = doc.find("\n## ")
        doc = doc + "\n" + block if at < 0 else doc[: at + 1] + block + doc[at + 1:]
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc)


def self_test():
    assert num(1234567.8) == "1,234,568"
    assert "could not run (exit 2)" in fanout_rows(None, "c", 2)[0]
    good = {"ok": True, "nodes_cpu_us_per_delivery": 1.5, "deliveries_per_sec": 50000.0,
            "latency_ms": {"p50": 1, "p99": 6.0, "p99_9": 8, "max": 9}}
    rows = fanout_rows(good, "c", 0)
    assert rows[0].endswith("| yes | `c` |") and rows[1].endswith("| no | `c` |"), rows
    assert "user" not in rows[0] and "node-side" not in rows[1], rows
    split = dict(good, nodes_user_us_per_delivery=0.5, nodes_kernel_us_per_delivery=1.0,
                 node_latency={"p99_le_ms": 2.5, "p99_above_ms": None, "count": 10})
    rows = fanout_rows(split, "c", 0)
    assert "| 1.50 µs = user 0.50 + kernel 1.00 (both nodes;" in rows[0], rows
    assert "max 9.00 ms; node-side p99 ≤ 2.5 ms; 50,000" in rows[1], rows
    assert rows[0].endswith("| yes | `c` |") and rows[1].endswith("| no | `c` |"), rows
    over = dict(split, node_latency={"p99_le_ms": None, "p99_above_ms": 10000.0})
    assert "node-side p99 > 10000 ms;" in fanout_rows(over, "c", 0)[1]
    missing = dict(split, node_latency={"p99_le_ms": None, "p99_above_ms": None, "nodes_read": 0})
    assert "node-side" not in fanout_rows(missing, "c", 0)[1]
    rooms = dict(split, latency_ms={"p50": 0.5, "p99": 1.5, "p99_9": 3, "max": 4})
    r = rooms_row(rooms, "c", 0)
    assert "max 4.00 ms; node-side p99 ≤ 2.5 ms;" in r and "1.50 µs = user 0.50 + kernel 1.00 per" in r, r
    assert r.endswith("| yes | `c` |"), r
    conn = {"ok": True, "connections_per_sec": 12000.0, "connected": 20000,
            "handshake_ms": {"p50": 1.0, "p99": 2.0}, "node_cpu_us_per_connection": 50.0,
            "node_user_us_per_connection": 12.5, "node_kernel_us_per_connection": 37.5}
    assert "50.0 µs = user 12.5 + kernel 37.5 per accepted" in connect_row(conn, "c", 0)
    assert "50.0 µs per accepted" in connect_row(dict(conn, node_user_us_per_connection=None), "c", 0)
    idle = {"ok": True, "rss_per_connection_kb": 3.5, "connected": 10000, "channels": 100,
            "hold_secs": 30.0, "disconnects": 0, "connections_per_sec": 5000.0,
            "node": {"rss_before_kb": 8192, "rss_after_kb": 43000}, "cpu_us_per_connection": 40.0,
            "user_us_per_connection": 10.0, "kernel_us_per_connection": 30.0}
    assert "node CPU 40.0 µs = user 10.0 + kernel 30.0 each)" in idle_row(idle, "c", 0)
    step = {"rate": 400.0, "deliveries_per_sec": 4e5, "p99_ms": 9.0, "verdict": "p99 120 ms > 100 ms",
            "generator_cores": 0.95, "nodes_cores": 0.7, "report": {"runtime_threads": 1}}
    ramp = {"ok": True, "highest_clean": dict(step, rate=200.0), "first_unclean": step, "steps": [step]}
    assert "| yes |" in ramp_row(ramp, "c", 0)
    assert "node-side" not in ramp_row(ramp, "c", 0)
    best = dict(step, rate=200.0, node_latency={"p99_le_ms": 5.0})
    assert "p99 9.00 ms; node-side p99 ≤ 5 ms)" in ramp_row(dict(ramp, highest_clean=best), "c", 0)
    assert "| no |" in ramp_row(dict(ramp, first_unclean=dict(step, generator_cores=0.5)), "c", 0)
    assert "no clean step" in ramp_row(dict(ramp, highest_clean=None), "c", 1)
    pusher = dict(split, protocol="pusher", nodes_cpu_us_per_delivery=1.65,
                  nodes_user_us_per_delivery=0.65)
    r = pusher_cpu_row("fanout", pusher, split, "c", 0)
    assert "| 1.10 × (1.65 µs = user 0.65 + kernel 1.00 against 1.50 µs" in r and "user part 1.30 ×" in r, r
    assert r.endswith("| yes | `c` |"), r
    r = pusher_cpu_row("fanout", dict(pusher, nodes_cpu_us_per_delivery=1.9), split, "c", 0)
    assert r.endswith("| no | `c` |"), r
    assert "could not run" in pusher_cpu_row("rooms", None, split, "c", 2)
    assert "(Pusher protocol)" in fanout_rows(pusher, "c", 0, label=PUSHER)[0]
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "fanout.json"), "w", encoding="utf-8") as f:
            f.write(json.dumps(split) + "\n" + json.dumps(pusher) + "\nnot json\n")
        assert load(d, "fanout")[0] == split and load(d, "fanout", "pusher")[0] == pusher
        assert load(d, "idle", "pusher") == (None, "-", None)
    doc = "# B\n\nintro\n\n## Old\n\ntext\n"
    with tempfile.NamedTemporaryFile("w+", suffix=".md", delete=False) as f:
        f.write(doc)
    write(f.name, f"{BEGIN}\none\n{END}\n")
    write(f.name, f"{BEGIN}\ntwo\n{END}\n")
    with open(f.name, encoding="utf-8") as g:
        out = g.read()
    os.unlink(f.name)
    assert out == f"# B\n\nintro\n\n## Standard set (make bench)\n\n{BEGIN}\ntwo\n{END}\n\n## Old\n\ntext\n", out
    print("bench_table.py: self-test OK")


def main(argv):
    if argv[1:] == ["--self-test"]:
        self_test()
        return 0
    if len(argv) not in (2, 4) or (len(argv) == 4 and argv[2] != "--write"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    text = section(argv[1])
    print(text, end="")
    if len(argv) == 4:
        write(argv[3], text)
        print(f"written into {argv[3]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
