"""The programs of a node's pods: each container with a command runs as a process inside its
pod (vrouter.host.programs), supervised here as the kubelet supervises containers, in the
node's trio loop (never in the data-path thread):
  - restarted per the pod's restartPolicy (Always: after any exit; OnFailure: after a failure;
    Never: not at all), the kubelet's way: the first restart at once, then after 10 s, 20 s,
    40 s, ... at most 5 minutes (CrashLoopBackOff); a program that ran for 10 minutes starts
    the count again;
  - its output (stdout and stderr) kept in a bounded ring per run, the last run's too, for
    `vrouter logs POD [-c CONTAINER] [-f] [--tail N] [--previous]`;
  - a program that cannot be started (no such file, not executable, ...) is reported in the
    pod's status and in its log with the file and field of its command, and tried again as a
    crashed one would be;
  - readiness as Kubernetes defines it: a container is ready when it runs and, if it has a
    readinessProbe, once the probe succeeded (successThreshold times; failureThreshold failures
    make it unready again); a livenessProbe that fails failureThreshold times in a row kills
    the program (it is restarted per restartPolicy). Probes run from the node: tcpSocket and
    httpGet to the pod's address (from a socket made in the pod's namespace), exec as a
    program in the pod;
  - stopped with its pod: SIGTERM to its process group, SIGKILL after
    terminationGracePeriodSeconds; when the node stops, after at most STOP_ON_EXIT seconds.
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import signal
import socket
import time

import trio

from vrouter.host import netns, programs as host
from vrouter.model import podspec
from vrouter.model.config import Pod

log = logging.getLogger("vrouter.node.programs")

INITIAL_BACKOFF = 10.0      # seconds: the kubelet's container restart back-off
MAX_BACKOFF = 300.0
LOG_BYTES = 1 << 20         # kept per run of a container; older lines are dropped (counted)
LOG_LINE = 16 << 10         # a longer line is cut into pieces of this size
FOLLOW_QUEUE = 4096         # lines a `logs -f` client may be behind before it loses some
STATUS_TIMEOUT = 10.0       # seconds for the launcher to say whether the program started
STOP_ON_EXIT = 2.0          # seconds a program gets to stop when its node stops
PROBE_RESPONSE = 64 << 10   # bytes of an httpGet probe's answer that are read
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


# --- sans-IO pieces --------------------------------------------------------------------------

def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values: a defined variable is
    replaced, an undefined reference stays as written, $$ is a literal $."""
    def one(m):
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _VAR.sub(one, text)


def field_value(pod: Pod, path: str, host_ip: str) -> str:
    """The downward API's fieldRef values vrouter knows (podspec.ENV_FIELDS)."""
    return {"metadata.name": pod.name, "metadata.namespace": pod.namespace,
            "status.podIP": str(pod.ip), "spec.nodeName": pod.node, "status.hostIP": host_ip,
            "spec.serviceAccountName": "default"}[path]


def environment(pod: Pod, container: podspec.Container, host_ip: str) -> dict[str, str]:
    """The program's environment: a PATH, HOME and HOSTNAME as a container has them, then the
    container's env in order (each value may refer to the ones before it)."""
    env = {"PATH": os.environ.get("PATH", DEFAULT_PATH), "HOME": "/root",
           "HOSTNAME": hostname(pod)}
    own: dict[str, str] = {}
    for name, kind, value in container.env:
        own[name] = field_value(pod, value, host_ip) if kind == "field" else expand(value, own)
    return {**env, **own}


def hostname(pod: Pod) -> str:
    return pod.hostname or pod.name[:63]


class Backoff:
    """The kubelet's restart back-off for one container, sans-IO (times in seconds)."""

    def __init__(self, initial: float = INITIAL_BACKOFF, cap: float = MAX_BACKOFF):
        self.initial, self.cap = initial, cap
        self.current: float | None = None
        self.updated = 0.0

    def delay(self, finished: float) -> float:
        """How long after an exit at `finished` the next start waits (and note that start)."""
        if self.current is None or finished - self.updated > 2 * self.cap:
            self.current, self.updated = self.initial, finished   # at once, then `initial`
            return 0.0
        wait = self.current
        self.current = min(self.current * 2, self.cap)
        self.updated = finished + wait
        return wait


class Follower:
    """One `logs -f` client: a bounded queue of lines; what does not fit is counted."""

    def __init__(self, size: int = FOLLOW_QUEUE):
        self.send, self.receive = trio.open_memory_channel(size)
        self.dropped = 0

    def offer(self, line: str) -> None:
        try:
            self.send.send_nowait(line)
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


class LogRing:
    """The output of one run of a container: whole lines, at most `limit` bytes (the oldest
    go first, counted in `dropped`)."""

    def __init__(self, limit: int = LOG_BYTES):
        self.limit = limit
        self.lines: collections.deque[str] = collections.deque()
        self.size = 0
        self.dropped = 0
        self.followers: set[Follower] = set()
        self.partial = b""

    def add(self, line: str) -> None:
        self.lines.append(line)
        self.size += len(line) + 1
        while self.size > self.limit and len(self.lines) > 1:
            self.size -= len(self.lines.popleft()) + 1
            self.dropped += 1
        for f in list(self.followers):
            f.offer(line)

    def feed(self, data: bytes) -> None:
        """Bytes as the program wrote them: complete lines are kept, the rest waits."""
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        for raw in lines:
            self._add_raw(raw)
        while len(self.partial) > LOG_LINE:
            self._add_raw(self.partial[:LOG_LINE])
            self.partial = self.partial[LOG_LINE:]

    def flush(self) -> None:
        if self.partial:
            self._add_raw(self.partial)
            self.partial = b""

    def _add_raw(self, raw: bytes) -> None:
        for k in range(0, max(len(raw), 1), LOG_LINE):
            self.add(raw[k:k + LOG_LINE].decode("utf-8", "replace"))

    def tail(self, n: int | None = None) -> list[str]:
        lines = list(self.lines)
        return lines if n is None else lines[max(0, len(lines) - n):] if n > 0 else []

    def close(self) -> None:
        for f in self.followers:
            f.send.close()
        self.followers.clear()


# --- probes ----------------------------------------------------------------------------------

def _socket_in(path: str) -> socket.socket:
    with netns.entered(path):
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


async def probe(p: podspec.Probe, pod: Pod, container: podspec.Container, cluster: str,
                host_ip: str) -> tuple[bool, str]:
    """One probe as the kubelet runs it: (success, what happened)."""
    result = (False, f"timed out after {p.timeout:g}s")
    with trio.move_on_after(p.timeout):
        if p.action == "exec":
            result = await _exec_probe(p, pod, container, cluster, host_ip)
        else:
            result = await _network_probe(p, pod, container)
    return result


async def _network_probe(p: podspec.Probe, pod: Pod, container) -> tuple[bool, str]:
    port = container.port_number(p.port)
    if port is None:
        return False, f"no port named {p.port!r}"
    target = f"{pod.ip}:{port}"
    try:
        raw = await trio.to_thread.run_sync(_socket_in, pod.netns_path)
    except OSError as exc:
        return False, f"cannot enter the pod's network namespace: {exc}"
    with trio.socket.from_stdlib_socket(raw) as sock:
        try:
            await sock.connect((str(pod.ip), port))
        except OSError as exc:
            return False, f"dial tcp {target}: {exc.strerror or exc}"
        if p.action == "tcpSocket":
            return True, f"tcp {target} accepted"
        headers = "".join(f"{k}: {v}\r\n" for k, v in p.headers)
        request = (f"GET {p.path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: kube-probe/1.31\r\n"
                   f"Accept: */*\r\n{headers}Connection: close\r\n\r\n").encode()
        try:
            await sock.send(request)
            answer = b""
            while b"\r\n" not in answer and len(answer) < PROBE_RESPONSE:
                chunk = await sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except OSError as exc:
            return False, f"http {target}{p.path}: {exc.strerror or exc}"
    status = answer.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or not status[1].isdigit():
        return False, f"http {target}{p.path}: no HTTP answer"
    code = int(status[1])
    return 200 <= code < 400, f"http {target}{p.path}: status {code}"


async def _exec_probe(p, pod, container, cluster, host_ip) -> tuple[bool, str]:
    env = environment(pod, container, host_ip)
    try:
        started = host.spawn(cluster, pod.name, pod.netns_path, _netns_name(pod), hostname(pod),
                             [expand(a, env) for a in p.command], env, container.working_dir,
                             output=False)
    except OSError as exc:
        return False, f"cannot start {p.command[0]!r}: {exc.strerror or exc}"
    try:
        problem = await _start_status(started)
        code = await _wait(started.process)
    finally:
        if started.process.poll() is None:   # timed out (cancelled): the probe is killed
            host.signal_group(started.pid, signal.SIGKILL)
            started.process.wait()
    if problem:
        return False, f"cannot start {p.command[0]!r}: {problem}"
    return code == 0, f"exec {' '.join(p.command)}: exit code {code}"


def _netns_name(pod: Pod) -> str | None:
    return None if pod.netns.startswith("/") else pod.netns


async def _start_status(started: host.Started) -> str | None:
    """What the launcher said: None when the program started, else the problem."""
    stream = trio.lowlevel.FdStream(started.status)
    data = b""
    try:
        with trio.move_on_after(STATUS_TIMEOUT):
            while True:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
    finally:
        await stream.aclose()
    if not data:
        return None
    try:
        d = json.loads(data)
        return f"{d['step']}: {d['error']}"
    except (ValueError, KeyError):
        return data.decode(errors="replace")


async def _exited(process) -> None:
    """Until `process` has exited (without reaping it: its supervisor does)."""
    try:
        fd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


async def _wait(process) -> int:
    """The exit code of `process` (negative: the signal that ended it), from trio."""
    try:
        fd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return process.wait()
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)
    return process.wait()


# --- a container's runs ----------------------------------------------------------------------

class Run:
    """A container of a pod and its runs: state as `kubectl describe pod` shows it."""

    def __init__(self, pod: Pod, spec: podspec.Container):
        self.pod, self.spec = pod, spec
        self.state = "waiting"
        self.reason = "ContainerCreating"
        self.pid: int | None = None
        self.started: float | None = None     # wall clock, for status
        self.restarts = 0
        self.last_exit: dict | None = None
        self.error: str | None = None         # why it could not start, FILE: FIELD: problem
        self.next_start: float | None = None  # monotonic
        self.backoff = Backoff()
        self.logs = LogRing()
        self.previous: LogRing | None = None
        self.ready_probe: bool | None = None if spec.readiness else True
        self.probe_result = ""
        self.process = None
        self.exited = trio.Event()

    @property
    def ready(self) -> bool:
        if not self.spec.runs:   # nothing runs: only a probe (of what the user started) counts
            return self.ready_probe is not False and (self.spec.readiness is None or
                                                      bool(self.ready_probe))
        return self.state == "running" and bool(self.ready_probe)

    def describe(self) -> dict:
        now = time.monotonic()
        return {"name": self.spec.name, "command": list(self.spec.argv), "state": self.state,
                "reason": self.reason, "pid": self.pid, "ready": self.ready,
                "restarts": self.restarts,
                "started": round(self.started, 3) if self.started else None,
                "last_exit": self.last_exit, "error": self.error,
                "next_start_in": round(self.next_start - now, 1)
                if self.next_start and self.next_start > now else None,
                "probe": self.probe_result, "log_lines": len(self.logs.lines),
                "log_dropped": self.logs.dropped}


class PodPrograms:
    """The containers of one pod, run and probed in a nursery of their own."""

    def __init__(self, owner: "Programs", pod: Pod):
        self.owner, self.pod = owner, pod
        self.runs = {c.name: Run(pod, c) for c in pod.containers}
        self.scope: trio.CancelScope | None = None
        self.done = trio.Event()
        self.stopping = False
        self.replacing = False   # about to be made again from a new template: not ready

    @property
    def ready(self) -> bool:
        return not self.stopping and not self.replacing and all(
            r.ready for r in self.runs.values())

    @property
    def failing(self) -> bool:
        """Not ready, and not about to be: a program could not start, exited or ended."""
        return not self.ready and any(r.error or r.restarts or r.state == "terminated"
                                      for r in self.runs.values())

    async def run(self) -> None:
        try:
            with trio.CancelScope() as self.scope:
                async with trio.open_nursery() as nursery:
                    for r in self.runs.values():
                        if r.spec.runs:
                            nursery.start_soon(self._supervise, r)
                        elif r.spec.readiness:
                            nursery.start_soon(self._probing, r, r.spec.readiness, True)
        finally:
            with trio.CancelScope(shield=True):
                await self._end_all(STOP_ON_EXIT)
            for r in self.runs.values():
                r.logs.close()
                if r.previous:
                    r.previous.close()
            self.done.set()

    async def stop(self, grace: float) -> None:
        """SIGTERM to every program, SIGKILL after `grace` seconds, then the supervision ends."""
        self.stopping = True
        await self._end_all(grace)
        if self.scope is not None:
            self.scope.cancel()
        await self.done.wait()

    async def _end_all(self, grace: float) -> None:
        alive = [r.process for r in self.runs.values() if r.process is not None and
                 r.process.poll() is None]
        for process in alive:
            host.signal_group(process.pid, signal.SIGTERM)
        with trio.move_on_after(grace):
            for process in alive:
                await _exited(process)
        for process in alive:
            if process.poll() is None:
                host.signal_group(process.pid, signal.SIGKILL)
        with trio.move_on_after(1.0):
            for process in alive:
                await _exited(process)

    async def _supervise(self, r: Run) -> None:
        """Start, wait, restart per restartPolicy with back-off: until the pod goes."""
        first = True
        while not self.stopping:
            if not first:
                r.restarts += 1
                r.previous, r.logs = r.logs, LogRing()
                if r.previous:
                    r.previous.close()
            first = False
            code = await self._one_run(r)
            finished = time.monotonic()
            policy = self.pod.restart_policy
            if self.stopping or policy == "Never" or (policy == "OnFailure" and code == 0):
                r.state = "terminated"
                return
            delay = r.backoff.delay(finished)
            if delay:
                r.state, r.reason = "waiting", "CrashLoopBackOff"
                r.next_start = finished + delay
                r.logs.add(f"vrouter: back-off {delay:g}s restarting failed container "
                           f"{r.spec.name} of pod {self.pod.name}")
                await trio.sleep(delay)
                r.next_start = None

    async def _one_run(self, r: Run) -> int:
        """One run of a container, from its start to its exit: the exit code (127 when it
        could not be started, negative for a signal)."""
        owner, pod = self.owner, self.pod
        env = environment(pod, r.spec, owner.host_ip)
        argv = [expand(a, env) for a in r.spec.argv]
        r.exited = trio.Event()
        r.ready_probe = None if r.spec.readiness else True
        try:
            started = host.spawn(owner.cluster_name, pod.name, pod.netns_path, _netns_name(pod),
                                 hostname(pod), argv, env, r.spec.working_dir)
        except OSError as exc:   # no processes left, say: reported like a failed start
            self._cannot_start(r, argv, f"cannot run the launcher: {exc.strerror or exc}")
            r.exited.set()
            return 127
        r.process = started.process
        probes = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, r, started.output)
            problem = await _start_status(started)
            if problem:
                self._cannot_start(r, argv, problem)
            else:
                r.state, r.reason, r.pid, r.error = "running", "Started", started.pid, None
                r.started = time.time()
                log.info("pod %s: container %s started (pid %d): %s", pod.name, r.spec.name,
                         started.pid, " ".join(argv))
                nursery.start_soon(self._probes, r, probes)
            code = await _wait(started.process)
            probes.cancel()
            host.signal_group(started.pid, signal.SIGKILL)   # its children end with it
            r.exited.set()
            nursery.cancel_scope.deadline = trio.current_time() + 1.0   # the pump's last lines
        r.pid = None
        r.process = None
        r.ready_probe = None if r.spec.readiness else True
        if not problem:
            r.state = "terminated"
            r.reason = "Completed" if code == 0 else "Error"
            r.last_exit = {"exit_code": code if code >= 0 else 128 - code,
                           "signal": signal.Signals(-code).name if code < 0 else None,
                           "reason": r.reason, "finished": round(time.time(), 3)}
            log.info("pod %s: container %s exited: %s", pod.name, r.spec.name,
                     f"code {code}" if code >= 0 else f"signal {-code}")
        return code if not problem else 127

    async def _probes(self, r: Run, scope: trio.CancelScope) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                if r.spec.readiness:
                    nursery.start_soon(self._probing, r, r.spec.readiness, True)
                if r.spec.liveness:
                    nursery.start_soon(self._probing, r, r.spec.liveness, False)

    def _cannot_start(self, r: Run, argv: list[str], problem: str) -> None:
        r.state, r.reason = "waiting", "StartError"
        r.error = f"{r.spec.where}.{r.spec.program_field}: cannot start {argv[0]!r}: {problem}"
        r.last_exit = {"exit_code": 127, "signal": None, "reason": "StartError",
                       "finished": round(time.time(), 3)}
        r.logs.add(f"vrouter: {r.error}")
        log.warning("pod %s: %s", self.pod.name, r.error)

    async def _pump(self, r: Run, fd: int) -> None:
        ring = r.logs
        stream = trio.lowlevel.FdStream(fd)
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                ring.feed(data)
        finally:
            ring.flush()
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _probing(self, r: Run, p: podspec.Probe, readiness: bool) -> None:
        """A probe every periodSeconds from initialDelaySeconds on; readiness follows the
        thresholds, a failed liveness kills the program (its restart policy decides then)."""
        await trio.sleep(p.initial_delay)
        successes = failures = 0
        while True:
            ok, what = await probe(p, self.pod, r.spec, self.owner.cluster_name,
                                   self.owner.host_ip)
            r.probe_result = f"{'readiness' if readiness else 'liveness'} {p.describe()}: {what}"
            if ok:
                successes, failures = successes + 1, 0
            else:
                successes, failures = 0, failures + 1
            if readiness:
                if successes >= p.success_threshold:
                    r.ready_probe = True
                elif failures >= p.failure_threshold:
                    r.ready_probe = False
            elif failures >= p.failure_threshold and r.process is not None:
                r.logs.add(f"vrouter: liveness probe failed {failures} times ({what}): "
                           "killing the container")
                host.signal_group(r.process.pid, signal.SIGTERM)
                with trio.move_on_after(self.pod.grace_seconds):
                    await r.exited.wait()
                host.signal_group(r.process.pid, signal.SIGKILL)
                return
            await trio.sleep(p.period)


# --- the node's programs ---------------------------------------------------------------------

class Programs:
    def __init__(self, cluster_name: str, host_ip: str, nursery_of):
        self.cluster_name = cluster_name
        self.host_ip = host_ip
        self.nursery_of = nursery_of      # () -> the node's nursery
        self.pods: dict[str, PodPrograms] = {}

    def start(self, pod: Pod) -> None:
        """Run a pod's programs (its interface is there)."""
        if not pod.containers or pod.name in self.pods:
            return
        p = PodPrograms(self, pod)
        self.pods[pod.name] = p
        self.nursery_of().start_soon(p.run)

    async def stop(self, name: str, grace: float) -> None:
        p = self.pods.pop(name, None)
        if p is not None:
            await p.stop(grace)

    def update(self, pod: Pod, drain: float) -> None:
        """A kept pod (same interface) with new labels or a new template: a change of its
        containers makes them again, after `drain` seconds unready (so that every node takes
        it out of its Services first); the rest needs nothing."""
        p = self.pods.get(pod.name)
        if p is None:
            self.start(pod)
            return
        if p.pod.containers == pod.containers and p.pod.restart_policy == pod.restart_policy:
            p.pod = pod
            for r in p.runs.values():
                r.pod = pod
            return
        p.replacing = True

        async def replace():
            await trio.sleep(drain)
            await self.stop(pod.name, p.pod.grace_seconds)
            self.start(pod)
        self.nursery_of().start_soon(replace)

    def ready(self, name: str) -> bool:
        p = self.pods.get(name)
        return True if p is None else p.ready

    def failing(self, name: str) -> bool:
        p = self.pods.get(name)
        return p is not None and p.failing

    def status(self, name: str) -> dict | None:
        p = self.pods.get(name)
        if p is None:
            return None
        return {"ready": p.ready, "restart_policy": p.pod.restart_policy,
                "containers": [r.describe() for r in p.runs.values()]}

    def run_of(self, pod: str, container: str | None) -> Run:
        """KeyError (with the reason) when there is no such pod or container here."""
        p = self.pods.get(pod)
        if p is None:
            raise KeyError(f"pod {pod!r} runs no programs on this node")
        if container is None:
            return next(iter(p.runs.values()))   # kubectl's default: the first container
        if container not in p.runs:
            raise KeyError(f"pod {pod!r} has no container {container!r} (containers: "
                           f"{', '.join(p.runs)})")
        return p.runs[container]

    def kill_all(self) -> None:
        """Last resort at the node's exit: SIGKILL to every program group still there."""
        for p in self.pods.values():
            for r in p.runs.values():
                if r.process is not None and r.process.poll() is None:
                    host.signal_group(r.process.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            host.reap(self.cluster_name, list(self.pods))

