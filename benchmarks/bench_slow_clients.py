"""Benchmark: legitimate uploads to `mammokit serve` while slow clients trickle request bodies (issue 25, item 3).

The attack of issue 25: as many connections as `--queue` (and more) each send a POST's headers and then its
body at 1 byte/s, reconnecting whenever the server hangs up. Without a body timeout every queue slot stays held
and every other upload gets 503 for as long as the attacker likes.

In one run, loopback only, a tiny random-weight run (tests/serve_support.py) served by the real CLI
(`mammokit serve`, uvicorn, a subprocess), one phase per row, each `--seconds` long:

    baseline          no attack
    attack            QUEUE + EXTRA trickling connections from one address (127.0.0.2)
    attack, spread    the same connections, each from its own address (127.0.0.10...): --per-client cannot
                      help; a body being received holds no job slot (serve.work.UploadGate), and each trickle
                      is cut off after --body-timeout
    attack, no timeout the one-address attack against a server without a body timeout and with --per-client
                      QUEUE: the job slots stay free all the same (before issue 25's fix each trickle held one
                      until its body was complete, and every legitimate upload got 503)

Meanwhile LEGIT client threads (from 127.0.0.1) upload one DICOM view each, back to back (a 503/429 is
counted and the next upload sent after 0.5 s). Reported per phase: uploads sent, share answered 200,
p50/p95 latency of the 200s, statuses, attacker connections cut off (408) or refused (429), and the server's
CPU seconds beside the wall seconds.

    python benchmarks/bench_slow_clients.py [--seconds 60] [--queue 4] [--extra 4] [--legit 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from mammokit.utils.machine import cpu_name
from serve_support import make_exam, make_runs, serve_process

BOUNDARY = "bench-slow-clients"


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children), from /proc/PID/stat, in seconds."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Attacker(threading.Thread):
    """One connection at a time from `source`: headers, then the body at 1 byte/s; reconnects when cut off."""

    def __init__(self, port: int, source: str, stop: threading.Event, outcomes: Counter) -> None:
        super().__init__(daemon=True)
        self.port, self.source, self.stop, self.outcomes = port, source, stop, outcomes

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                sock = socket.socket()
                sock.bind((self.source, 0))
                sock.connect(("127.0.0.1", self.port))
                sock.sendall(
                    f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}"
                    f"\r\nContent-Length: 1000000\r\n\r\n--{BOUNDARY}\r\n".encode()
                )
                status = self._trickle(sock)
            except OSError as exc:
                status = f"socket error ({type(exc).__name__})"
            self.outcomes[status] += 1
            if status in ("429", "503"):
                self.stop.wait(0.5)  # refused at once: try again soon, as an attacker would

    def _trickle(self, sock: socket.socket) -> str:
        sock.settimeout(1.0)  # the 1 s between bytes is the wait for the server's answer
        with sock:
            while not self.stop.is_set():
                try:
                    answer = sock.recv(4096)
                    return answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"
                except TimeoutError:
                    pass
                try:
                    sock.sendall(b"x")
                except OSError:
                    return "closed"
        return "held to the end"


def _legit(url: str, files: list[tuple], stop: threading.Event, results: list) -> None:
    with httpx.Client(timeout=600) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                status = client.post(url + "/v1/predict", files=files, data={"heatmap": "none"}).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            results.append((status, time.perf_counter() - t0))
            if status != 200:
                stop.wait(0.5)


def phase(url: str, port: int, files: list, *, seconds: float, n_legit: int, attackers: list[str]) -> dict:
    stop = threading.Event()
    outcomes: Counter = Counter()
    threads = [Attacker(port, source, stop, outcomes) for source in attackers]
    for t in threads:
        t.start()
    time.sleep(2.0 if attackers else 0.0)  # the attack is in place before the first legitimate upload
    results: list = []
    legit = [threading.Thread(target=_legit, args=(url, files, stop, results), daemon=True) for _ in range(n_legit)]
    for t in legit:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in legit + threads:
        t.join(30)
    ok = [s for status, s in results if status == 200]
    return {
        "uploads": len(results),
        "answered_200_share": round(len(ok) / max(1, len(results)), 3),
        "p50_ms": round(float(np.percentile(ok, 50)) * 1e3, 1) if ok else None,
        "p95_ms": round(float(np.percentile(ok, 95)) * 1e3, 1) if ok else None,
        "statuses": dict(Counter(str(status) for status, _ in results).most_common()),
        "attack_connections": dict(outcomes.most_common()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase (default 60)")
    parser.add_argument("--queue", type=int, default=4, help="the server's --queue (default 4)")
    parser.add_argument("--extra", type=int, default=4, help="attacking connections beyond --queue (default 4)")
    parser.add_argument("--legit", type=int, default=2, help="legitimate client threads (default 2)")
    parser.add_argument("--body-timeout", type=float, default=20.0, help="the server's --body-timeout (default 20)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="mammokit-slow-clients-"))
    run = make_runs(work / "runs")
    view = make_exam(work / "exam")[0]
    files = [("files", (view.name, view.read_bytes(), "application/dicom"))]
    n_attack = args.queue + args.extra
    common = [str(run), "--backend", "torch", "--device", "cpu", "--queue", str(args.queue), "--workers", "2",
              "--heatmap", "none", "--cache-dir", str(work / "cache")]  # fmt: skip
    defended = [*common, "--body-timeout", str(args.body_timeout), "--per-client", "2"]
    undefended = [*common, "--body-timeout", "1e6", "--per-client", str(args.queue)]
    plan = [
        ("baseline", defended, []),
        ("attack", defended, ["127.0.0.2"] * n_attack),
        ("attack, spread", defended, [f"127.0.0.{10 + i}" for i in range(n_attack)]),
        ("attack, no timeout", undefended, ["127.0.0.2"] * n_attack),
    ]
    rows = {}
    t_all, cpu_self = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    for name, server_args, attackers in plan:
        with serve_process(server_args, work / f"serve-{len(rows)}.log") as (proc, url):
            port = int(url.rsplit(":", 1)[1])
            cpu0, t0 = _cpu_seconds(proc.pid), time.perf_counter()
            row = phase(url, port, files, seconds=args.seconds, n_legit=args.legit, attackers=attackers)
            row["server_cpu_s"] = round(_cpu_seconds(proc.pid) - cpu0, 1)
            row["wall_s"] = round(time.perf_counter() - t0, 1)
            row["server_peak_rss_mib"] = round(_peak_rss_mib(proc.pid), 1)
        row["attacking_connections"] = len(attackers)
        rows[name] = row
        print(f"{name}: {json.dumps(row)}", flush=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = {
        "cpu": cpu_name(),
        "queue": args.queue,
        "per_client": 2,
        "body_timeout_s": args.body_timeout,
        "phase_seconds": args.seconds,
        "legit_threads": args.legit,
        "phases": rows,
        "bench_wall_s": round(time.perf_counter() - t_all, 1),
        "bench_client_cpu_s": round(usage.ru_utime + usage.ru_stime - cpu_self.ru_utime - cpu_self.ru_stime, 1),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
