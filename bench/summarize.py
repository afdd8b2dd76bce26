#!/usr/bin/env python3
"""Tables of medians and ratios from a bench/compare.sh results directory.

    python3 bench/summarize.py DIR        # print the table, write DIR/summary.txt
    python3 bench/summarize.py --one FILE # one line for one `tern load --json` report

DIR holds meta.json, runs.tsv (one line per run) and the runs' JSON reports.
Every figure is the median over the runs that produced a report; a run that
failed is counted in the n column and left out. Packets per server CPU-second
count deliveries in both directions (to the peer and back to the client)
divided by the server's utime + stime from /proc/PID/stat over the run.
"""

import csv
import json
import statistics
import sys
from pathlib import Path

SCENARIOS = {
    "S1": "1 allocation, 1200 B, window 32",
    "S2": "64 allocations, 100 B, window 4",
    "S3": "1000 allocations x 50 pps, 100 B",
    "S5": "allocation storm, 32 concurrent",
}


def failures(section):
    return sum((section or {}).get("failures", {}).values())


def metrics(report, run):
    """The figures of one run: name -> value."""
    cpu = report.get("server_cpu") or {}
    values = {"cores": cpu.get("cores"), "per_cpu": cpu.get("work_per_cpu_second")}
    if "alloc" in report:
        values["allocs_per_s"] = report["alloc"]["per_second"]
        values["errors"] = failures(report["alloc"])
    else:
        relay = report["relay"]
        delivered = relay["to_client"] + (relay.get("to_peer") or relay["to_client"])
        values["delivered_pps"] = delivered / max(report["duration_secs"], 1e-9)
        values["loss"] = relay["loss_percent"]
        values["p99"] = relay["rtt_ms"]["p99"]
        values["errors"] = failures(report.get("setup"))
    if run:
        values["rcvbuf"] = float(run["rcvbuf_errors"])
        # CPU the host spent on anything but this server and the load
        # generator: other programs sharing the machine during the run.
        other = float(run["host_cpu_s"]) - float(run["server_cpu_s"]) - float(run["client_cpu_s"])
        values["other"] = max(other, 0.0) / max(float(run["wall_s"]), 1e-9)
    return values


def one_line(path):
    report = json.loads(Path(path).read_text())
    m = metrics(report, None)
    if "alloc" in report:
        return (f"{m['allocs_per_s']:.0f} allocs/s, {m['per_cpu'] or 0:.0f} allocs/CPU-s, "
                f"{m['errors']} errors, {m['cores'] or 0:.2f} cores")
    return (f"{kilo(m['per_cpu'])} pkts/CPU-s, {m['cores'] or 0:.2f} cores, loss {m['loss']:.3f}%, "
            f"p99 {m['p99']:.3f} ms")


def kilo(value):
    return "-" if value is None else f"{value / 1000:.1f}k"


# Rows of the table: (metric key, label, format, ratio?). A ratio is
# tern / other; for p99 RTT lower is better.
RELAY_ROWS = [
    ("per_cpu", "pkts/server-CPU-s", kilo, True),
    ("delivered_pps", "delivered pkts/s", kilo, False),
    ("cores", "server cores", lambda v: f"{v:.2f}", False),
    ("loss", "loss %", lambda v: f"{v:.3f}", False),
    ("p99", "p99 RTT ms (lower better)", lambda v: f"{v:.3f}", "S3"),
    ("rcvbuf", "host RcvbufErrors", lambda v: f"{v:.0f}", False),
    ("errors", "setup errors", lambda v: f"{v:.0f}", False),
    ("other", "other load, cores", lambda v: f"{v:.2f}", False),
]
ALLOC_ROWS = [
    ("allocs_per_s", "allocations/s", lambda v: f"{v:.0f}", True),
    ("per_cpu", "allocs/server-CPU-s", lambda v: f"{v:.0f}", True),
    ("errors", "errors (per run)", lambda v: f"{v:.0f}", False),
    ("cores", "server cores", lambda v: f"{v:.2f}", False),
    ("other", "other load, cores", lambda v: f"{v:.2f}", False),
]


def summarize(directory):
    directory = Path(directory)
    meta = json.loads((directory / "meta.json").read_text())
    servers = meta["servers"]
    runs = {}  # (scenario, server) -> [metrics]
    attempts = {}
    not_idle = 0
    with open(directory / "runs.tsv") as tsv:
        for run in csv.DictReader(tsv, delimiter="\t"):
            key = (run["scenario"], run["server"])
            attempts[key] = attempts.get(key, 0) + 1
            not_idle += run["quiet"] == "no"
            try:
                report = json.loads((directory / run["report"]).read_text())
                runs.setdefault(key, []).append(metrics(report, run))
            except (OSError, ValueError, KeyError):
                pass

    lines = [
        f"tern benchmark: {meta['rounds']} round(s) of {meta['duration']}, commit {meta['commit']}",
        f"machine: {meta['nproc']} cores, {meta['cpu']}, kernel {meta['kernel']}, "
        f"rmem_max {meta['rmem_max']}, load average at start {' '.join(meta['loadavg_at_start'])}",
        f"coturn on PATH: {meta['coturn'] or 'not found'}; coturn417: {meta.get('coturn417') or 'not found'}; "
        f"workers / relay threads: {meta.get('workers', 1)}",
        "",
    ]
    others = [s for s in servers if s != "tern"]
    header = ["scenario", "metric"] + servers + [f"tern/{o}" for o in others] + ["n"]
    rows = []
    for scenario in meta["scenarios"]:
        spec = ALLOC_ROWS if scenario == "S5" else RELAY_ROWS
        first = True
        for key, label, fmt, ratio in spec:
            medians = {}
            for server in servers:
                values = [m[key] for m in runs.get((scenario, server), []) if m.get(key) is not None]
                medians[server] = statistics.median(values) if values else None
            if key == "errors" and scenario != "S5" and not any(medians.values()):
                continue
            row = [f"{scenario} {SCENARIOS[scenario]}" if first else "", label]
            row += ["-" if medians[s] is None else fmt(medians[s]) for s in servers]
            for other in others:
                show = ratio is True or ratio == scenario
                if show and medians.get("tern") and medians.get(other):
                    row.append(f"{medians['tern'] / medians[other]:.2f}x")
                else:
                    row.append("")
            row.append(
                " ".join(f"{len(runs.get((scenario, s), []))}/{attempts.get((scenario, s), 0)}" for s in servers)
                if first else ""
            )
            rows.append(row)
            first = False
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt_row = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    lines.append(fmt_row(header))
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        if row[0] and row is not rows[0]:
            lines.append("")
        lines.append(fmt_row(row))
    lines += [
        "",
        "Medians over runs; n = runs with a report / runs attempted, per server in column order.",
        "pkts/server-CPU-s: deliveries both ways / server utime+stime (/proc/PID/stat) over the measured "
        "interval; server cores: the same CPU-s / wall s.",
        "host RcvbufErrors: /proc/net/snmp delta during the run, every socket on the host. "
        "other load: host CPU-s not spent by the server or the load generator / wall s.",
        f"runs started without the host idle first: {not_idle} of {sum(attempts.values())}.",
        "",
        "per run, pkts (or allocations) per server CPU-second:",
    ]
    for scenario in meta["scenarios"]:
        for server in servers:
            values = [m["per_cpu"] for m in runs.get((scenario, server), []) if m.get("per_cpu")]
            if values:
                lines.append(f"  {scenario} {server:<10} " + "  ".join(f"{v:.0f}" for v in values))
    text = "\n".join(lines)
    (directory / "summary.txt").write_text(text + "\n")
    print(text)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(one_line(sys.argv[2]))
    elif len(sys.argv) == 2 and not sys.argv[1].startswith("-"):
        summarize(sys.argv[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
