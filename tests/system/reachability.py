"""The reachability matrix of the Kubernetes e2e NetworkPolicy tests: every pod tries every
pod (real TCP connections or UDP echoes, all at once), and the result is printed as a matrix of
sources (rows) by destinations (columns), `.` reached and `X` blocked, then compared with the
expected one. Blocked means what a NetworkPolicy does: the packet is dropped, so the probe times
out; a refusal (RST, port unreachable) is printed `R` and matches neither. A pod reaching its
own address never leaves it (the kernel delivers it locally), so the diagonal is always `.`."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROBE = str(Path(__file__).with_name("probe.py"))
TIMEOUT = 2.0   # long enough for one SYN retransmission on a busy machine
_source_ports = itertools.count(20000, 32)   # a fresh block of source ports for every matrix


MARKS = {"ok": ".", "timeout": "X", "refused": "R"}


def probe(netns: str, proto: str, port: int, addresses: list[str], sport: int) -> list[str]:
    """From inside `netns`: the outcome (probe.py: ok, timeout, refused) for each address."""
    result = subprocess.run(["ip", "netns", "exec", netns, sys.executable, PROBE, proto,
                             str(port), str(TIMEOUT), str(sport), *addresses],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"probe from {netns} failed: {result.stderr}")
    return json.loads(result.stdout)


def matrix(pods: dict[str, tuple[str, str]], proto: str, port: int,
           targets: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """pods: short name -> (netns, address); targets: column name -> address (default: the
    pods'). Returns source -> target -> mark (MARKS)."""
    targets = targets or {name: ip for name, (_ns, ip) in pods.items()}
    sport = next(_source_ports)
    with ThreadPoolExecutor(len(pods)) as pool:
        rows = pool.map(lambda item: probe(item[1][0], proto, port, list(targets.values()), sport),
                        pods.items())
        return {src: dict(zip(targets, (MARKS[outcome] for outcome in row)))
                for src, row in zip(pods, rows)}


def render(result: dict[str, dict[str, str]]) -> str:
    columns = list(next(iter(result.values())))
    width = max(len(c) for c in [*columns, *result]) + 1
    lines = [" " * width + "".join(c.rjust(width) for c in columns)]
    for src, row in result.items():
        lines.append(src.ljust(width) + "".join(row[c].rjust(width) for c in columns))
    return "\n".join(lines)


def parse(expected: str) -> dict[str, dict[str, str]]:
    """The matrix as `render` prints it (header line, then a row per source)."""
    lines = [line.split() for line in expected.strip().splitlines()]
    columns = lines[0]
    return {row[0]: dict(zip(columns, row[1:])) for row in lines[1:]}


def assert_matrix(pods, proto: str, port: int, expected: str, targets=None) -> None:
    want = parse(expected)
    got = matrix(pods, proto, port, targets)
    print(f"{proto}/{port}:\n{render(got)}")
    if got != want:
        raise AssertionError(f"reachability {proto}/{port} differs\nexpected:\n{render(want)}\n"
                             f"got:\n{render(got)}")
