#!/usr/bin/env python3
"""CPU seconds by thread while a benchmark's services run: the dispatcher's, the executors' and
RabbitMQ's (beam.smp) threads, grouped by process role and thread name (e.g. lapin-io-loop).

Start it, then the benchmark, in one shell:

    python3 scripts/thread_cpu.py 300 /tmp/threads.json &
    CARGO=/bin/true target/release/bench throughput --workers 4

It samples /proc every 50 ms from the moment a `pipelines dispatch` process is alive until none
is (or SECONDS pass). A thread's figure is its last reading minus its first. So, unlike the
benchmark's own figures, it counts every `pipelines execute` (the idle apply workers too) and
the services' start-up and shut-down: ~8% more CPU than the benchmark reports for a 5,000-job
run. Threads that live under 50 ms are missed. Linux only; nothing to install."""
import os, sys, time, collections, json

def procs():
    out = {}
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            comm = open(f'/proc/{pid}/comm').read().strip()
            cmd = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\0')
        except OSError:
            continue
        args = [a.decode(errors='replace') for a in cmd]
        if comm == 'beam.smp':
            out[pid] = 'rabbitmq'
        elif len(args) > 1 and args[0].endswith('pipelines') and args[1] in ('dispatch', 'execute'):
            out[pid] = 'dispatcher' if args[1] == 'dispatch' else 'executor'
    return out

def thread_cpu(pid):
    res = {}
    try:
        tids = os.listdir(f'/proc/{pid}/task')
    except OSError:
        return res
    for tid in tids:
        try:
            stat = open(f'/proc/{pid}/task/{tid}/stat').read()
        except OSError:
            continue
        name = stat[stat.index('(') + 1:stat.rindex(')')]
        f = stat[stat.rindex(')') + 2:].split(' ')
        res[tid] = (name, (int(f[11]) + int(f[12])) / 100.0)
    return res

first, last = {}, {}
seen_service = False
deadline = time.time() + float(sys.argv[1]) if len(sys.argv) > 1 else time.time() + 600
while time.time() < deadline:
    ps = procs()
    alive = any(r == 'dispatcher' for r in ps.values())
    if alive:
        seen_service = True
        for pid, role in ps.items():
            for tid, (name, cpu) in thread_cpu(pid).items():
                key = (role, pid, tid, name)
                first.setdefault(key, cpu)
                last[key] = cpu
    elif seen_service:
        break
    time.sleep(0.05)

groups = collections.Counter()
for key, cpu in last.items():
    role, _, _, name = key
    # Threads of one name (lapin-io-loop, tokio-rt-worker) are added up across processes.
    groups[(role, name)] += cpu - first[key]
for (role, name), cpu in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[1])):
    if cpu > 0:
        print(f'{role:11} {name:24} {cpu:7.2f}')
json.dump({f'{r}/{n}': c for (r, n), c in groups.items()}, open(sys.argv[2] if len(sys.argv) > 2 else '/tmp/threads.json', 'w'))
