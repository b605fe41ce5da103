#!/usr/bin/env python3
"""The report of scripts/bench-compare.sh: one markdown table of every step it ran and the
issue-P targets as ratios within that run. Usage: bench_compare_report.py OUT_DIR"""
import csv
import glob
import json
import os
import sys

out = sys.argv[1]
SERVERS = {"coordinator", "n1", "n2", "n3", "dev", "e1", "e2", "e3", "redis"}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def lat(op):
    return f"{op['p50_us']}/{op['p99_us']}" if op else ""


def cpu_cells(cpu):
    servers = {k: v for k, v in cpu.items() if k in SERVERS}
    per = ", ".join(f"{k} {v:.0f}" for k, v in sorted(servers.items()))
    return per, sum(servers.values())


rows = []
steps = {}  # (system, dist, workload, conc) -> step
for d in sorted(glob.glob(f"{out}/*/")):
    system = os.path.basename(d.rstrip("/"))
    if system in ("redis", "memory"):
        continue
    for f in sorted(glob.glob(f"{d}cluster-*.json")):
        j = load(f)
        if not j:
            continue
        w = j["workload"].upper()
        for s in j["steps"]:
            steps[(system, w, s["concurrency"])] = s
            per, total = cpu_cells(s.get("cpu_us_per_op", {}))
            rows.append((system, w, s["concurrency"], s["total_ops_per_sec"], lat(s.get("read")),
                         lat(s.get("update")), per, total, s.get("ratio_to_ping")))
            if s.get("ping") and w in ("W", "C"):
                pper, ptotal = cpu_cells(s.get("ping_cpu_us_per_op", {}))
                key = (system, "ping", s["concurrency"])
                if key not in steps:
                    steps[key] = {"total_ops_per_sec": s["ping"]["ops_per_sec"]}
                    rows.append((system, "ping", s["concurrency"], s["ping"]["ops_per_sec"],
                                 lat(s["ping"]), "", pper, ptotal, None))

for f in sorted(glob.glob(f"{out}/redis/*.csv")):
    name = os.path.basename(f)[:-4]
    t, c = name.split("-")
    with open(f) as fh:
        r = list(csv.DictReader(fh))
    if not r:
        continue
    rps = float(r[0]["rps"])
    p50 = int(float(r[0]["p50_latency_ms"]) * 1000)
    p99 = int(float(r[0]["p99_latency_ms"]) * 1000)
    cpu_us = None
    try:
        before, after, tck, start, end = open(f[:-4] + ".cpu").read().split()
        ops = rps * (float(end) - float(start))
        cpu_us = (int(after) - int(before)) / int(tck) * 1e6 / max(ops, 1)
    except (OSError, ValueError):
        pass
    op = {"set": "SET", "get": "GET"}[t]
    cell = f"{p50}/{p99}"
    rows.append(("redis", op, int(c), rps, cell if t == "get" else "", cell if t == "set" else "",
                 f"redis {cpu_us:.0f}" if cpu_us is not None else "", cpu_us or 0, None))
    steps[("redis", op, int(c))] = {"total_ops_per_sec": rps}

commit = open(f"{out}/commit").read().strip() if os.path.exists(f"{out}/commit") else "?"
print(f"Commit {commit}, {open(f'{out}/cores').read().strip() if os.path.exists(f'{out}/cores') else '?'} cores. "
      "Latencies p50/p99 in µs; CPU in µs per operation per server process (from /proc, measure phase).")
print()
print("| system | workload | conc | ops/s | read p50/p99 | write p50/p99 | CPU µs/op per process | servers' CPU µs/op | of ping |")
print("|---|---|---:|---:|---|---|---|---:|---:|")
for r in rows:
    ratio = f"{r[8] * 100:.0f}%" if r[8] is not None else ""
    print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:,.0f} | {r[4]} | {r[5]} | {r[6]} | {r[7]:.0f} | {ratio} |")


def ops(system, w, c):
    s = steps.get((system, w, c))
    return s["total_ops_per_sec"] if s else None


def ratio(a, b):
    return a / b if a and b else None


print()
print("Targets (issue P; ratios within this run):")
print()
print("| target | measured | goal | met |")
print("|---|---:|---:|---|")


def target(name, value, goal, better="ge", fmt="{:.2f}"):
    if value is None:
        print(f"| {name} | not run | {goal} | |")
        return
    ok = value >= goal if better == "ge" else value <= goal
    print(f"| {name} | {fmt.format(value)} | {'≥' if better == 'ge' else '≤'} {fmt.format(goal)} | {'yes' if ok else 'no'} |")


target("W QUORUM writes ÷ etcd puts, c64, zipfian",
       ratio(ops("pairdb-zipfian", "W", 64), ops("etcd-zipfian", "W", 64)), 2.0)
target("W with sync_writes ÷ etcd puts, c64, zipfian",
       ratio(ops("pairdb-sync", "W", 64), ops("etcd-zipfian", "W", 64)), 1.0)
target("A ÷ raw ping, c64, zipfian",
       ratio(ops("pairdb-zipfian", "A", 64), ops("pairdb-zipfian", "ping", 64)), 0.30)
target("C ÷ raw ping, c64, zipfian",
       ratio(ops("pairdb-zipfian", "C", 64), ops("pairdb-zipfian", "ping", 64)), 0.45)
w64 = steps.get(("pairdb-zipfian", "W", 64))
target("CPU µs per QUORUM write, all servers, c64",
       cpu_cells(w64.get("cpu_us_per_op", {}))[1] if w64 else None, 80, "le", "{:.0f}")
for w, op in (("C", "read"), ("W", "update")):
    s = steps.get(("pairdb-zipfian", w, 16))
    target(f"p99 of QUORUM {op}s at c16 (µs)", s[op]["p99_us"] if s and s.get(op) else None,
           5000, "le", "{:.0f}")
rss = load(f"{out}/pairdb-zipfian/rss.json")
target("coordinator peak RSS (MiB)", rss.get("coordinator") if rss else None, 200, "le", "{:.0f}")
mem = load(f"{out}/memory/rss.json")
budget = load(f"{out}/memory/budget.json")
if mem and budget:
    b = budget["block_cache_mb"] + budget["memtable_mb"] * budget["max_memtables"]
    grown = max(mem[n] for n in ("n1", "n2", "n3")) - mem["n1_idle"]
    target("storage-node RSS growth under a cache-filling load (MiB; budget = cache + memtables)",
           grown, b, "le", "{:.0f}")
print()
if rss:
    print("Peak RSS (MiB): " + ", ".join(f"{k} {v}" for k, v in sorted(rss.items())))
if mem and budget:
    print(f"Memory run: idle {mem['n1_idle']} MiB, peaks " + ", ".join(f"{n} {mem[n]}" for n in ("n1", "n2", "n3"))
          + f" MiB, budget {b} MiB")
