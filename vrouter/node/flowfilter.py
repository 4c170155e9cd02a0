"""Which flows to show: the filters of `vrouter observe` and of the page, as `hubble observe`
has them (sans-IO).

Values of one filter are alternatives (`--pod a --pod b`: either); different filters must all
hold. A pod or Service is `NAMESPACE/NAME` or `NAME` (namespace `default`), and matches by
prefix of the name, as Hubble's do (`--pod web` is every pod whose name starts with "web"):
  pod, from_pod, to_pod     a pod on either side / the source / the destination
  service                   the Service the connection was made to (or refused at)
  namespace                 a pod or Service of that namespace on either side
  verdict                   FORWARDED, TRANSLATED, DROPPED, REJECTED
  event                     start, end, drop, reject
  protocol                  tcp, udp, icmp
  port                      a port on either side (as sent or as translated)
  node                      the node that logged it
  since                     seconds since the epoch (from a duration: --since 5m)
A filter that does not parse is a FilterError naming it. The same filters travel to the node
(`to_request` / `from_request`), which applies them before it sends anything.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, fields

VERDICTS = ("FORWARDED", "TRANSLATED", "DROPPED", "REJECTED")
EVENTS = ("start", "end", "drop", "reject")
PROTOCOLS = ("tcp", "udp", "icmp")
_NAME = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-.a-z0-9]*)?$")
_DURATION = re.compile(r"^(\d+(\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
# the page's filter text: key:value words (from: and to: are pods)
QUERY_KEYS = {"pod": "pod", "from": "from_pod", "to": "to_pod", "from-pod": "from_pod",
              "to-pod": "to_pod", "service": "service", "svc": "service",
              "namespace": "namespace", "ns": "namespace", "verdict": "verdict",
              "event": "event", "protocol": "protocol", "proto": "protocol", "port": "port",
              "node": "node"}


class FilterError(ValueError):
    """A filter that does not parse; the message names it."""


@dataclass(frozen=True)
class FlowFilter:
    pod: tuple = ()
    from_pod: tuple = ()
    to_pod: tuple = ()
    service: tuple = ()
    namespace: tuple = ()
    verdict: tuple = ()
    event: tuple = ()
    protocol: tuple = ()
    port: tuple = ()
    node: tuple = ()
    since: float | None = None

    def matches(self, flow: dict) -> bool:
        src, dst = flow.get("source") or {}, flow.get("destination") or {}
        svc = flow.get("destination_service") or {}
        if self.pod and not any(_pod_is(src, p) or _pod_is(dst, p) for p in self.pod):
            return False
        if self.from_pod and not any(_pod_is(src, p) for p in self.from_pod):
            return False
        if self.to_pod and not any(_pod_is(dst, p) for p in self.to_pod):
            return False
        if self.service and not any(_named(svc.get("namespace"), svc.get("name"), s)
                                    for s in self.service):
            return False
        if self.namespace and not {src.get("namespace"), dst.get("namespace"),
                                   svc.get("namespace")} & set(self.namespace):
            return False
        if self.verdict and flow.get("verdict") not in self.verdict:
            return False
        if self.event and flow.get("event") not in self.event:
            return False
        if self.protocol and flow.get("protocol") not in self.protocol:
            return False
        if self.port and not set(self.port) & set(flow.get("ports") or ()):
            return False
        if self.node and flow.get("node_name") not in self.node:
            return False
        if self.since is not None and flow.get("time_ns", 0) < self.since * 1e9:
            return False
        return True

    def to_request(self) -> dict:
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in fields(self) if (v := getattr(self, f.name)) not in ((), None)}

    @property
    def empty(self) -> bool:
        return not self.to_request()


def _named(namespace: str | None, name: str | None, wanted: str) -> bool:
    want_ns, _, want_name = wanted.rpartition("/")
    return bool(name) and namespace == (want_ns or "default") and name.startswith(want_name)


def _pod_is(endpoint: dict, wanted: str) -> bool:
    return _named(endpoint.get("namespace"), endpoint.get("pod_name"), wanted)


def _names(flag: str, values) -> tuple:
    out = []
    for value in values:
        if not isinstance(value, str) or not _NAME.match(value):
            raise FilterError(f"{flag} {value!r}: expected NAMESPACE/NAME or NAME (lowercase "
                              "letters, digits, '-', '.')")
        out.append(value)
    return tuple(out)


def _choices(flag: str, values, choices, upper: bool) -> tuple:
    out = []
    for value in values:
        v = str(value).upper() if upper else str(value).lower()
        if v not in choices:
            raise FilterError(f"{flag} {value!r}: one of {', '.join(choices)}")
        out.append(v)
    return tuple(out)


def _ports(flag: str, values) -> tuple:
    out = []
    for value in values:
        text = str(value)
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise FilterError(f"{flag} {value!r}: a port number, 1-65535")
        out.append(int(text))
    return tuple(out)


def duration(flag: str, text: str) -> float:
    """Seconds of a duration such as 30s, 5m, 1.5h, 2d, 250ms."""
    m = _DURATION.match(str(text).strip())
    if not m:
        raise FilterError(f"{flag} {text!r}: a duration such as 30s, 5m, 1h or 2d")
    return float(m.group(1)) * _UNITS[m.group(3)]


def build(values: dict, flag=lambda name: "--" + name.replace("_", "-"),
          now: float | None = None) -> FlowFilter:
    """A filter from lists of values by filter name (`since` a duration, or `since_epoch`
    seconds); FilterError names the first bad one (as `flag(name)` calls it)."""
    known = {f.name for f in fields(FlowFilter)} | {"since_epoch"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise FilterError(f"{flag(unknown[0])}: no such filter (filters: "
                          f"{', '.join(sorted(known - {'since', 'since_epoch'}))}, since)")

    def listed(name):
        value = values.get(name) or ()
        return [value] if isinstance(value, (str, int)) else list(value)
    since = None
    if values.get("since") not in (None, ""):
        since = (time.time() if now is None else now) - duration(flag("since"), values["since"])
    if values.get("since_epoch") is not None:
        try:
            since = float(values["since_epoch"])
        except (TypeError, ValueError):
            raise FilterError(f"{flag('since')} {values['since_epoch']!r}: seconds since the "
                              "epoch") from None
    return FlowFilter(
        pod=_names(flag("pod"), listed("pod")),
        from_pod=_names(flag("from_pod"), listed("from_pod")),
        to_pod=_names(flag("to_pod"), listed("to_pod")),
        service=_names(flag("service"), listed("service")),
        namespace=tuple(n.rstrip("/") for n in _names(flag("namespace"), listed("namespace"))),
        verdict=_choices(flag("verdict"), listed("verdict"), VERDICTS, upper=True),
        event=_choices(flag("event"), listed("event"), EVENTS, upper=False),
        protocol=_choices(flag("protocol"), listed("protocol"), PROTOCOLS, upper=False),
        port=_ports(flag("port"), listed("port")),
        node=tuple(str(n) for n in listed("node")),
        since=since)


def from_request(request: dict) -> FlowFilter:
    """The filter a control request carries (its fields as to_request wrote them)."""
    values = dict(request or {})
    if "since" in values:
        values["since_epoch"] = values.pop("since")
    return build(values, flag=lambda name: f"filter {name}")


def parse_query(text: str) -> FlowFilter:
    """The page's filter box: words KEY:VALUE (pod:, from:, to:, service:, namespace:,
    verdict:, event:, protocol:, port:, node:); a word without a key is a pod."""
    values: dict[str, list] = {}
    for word in (text or "").split():
        key, sep, value = word.partition(":")
        if not sep:
            key, value = "pod", word
        name = QUERY_KEYS.get(key.lower())
        if name is None:
            raise FilterError(f"{key}: no such filter (filters: "
                              f"{', '.join(sorted(set(QUERY_KEYS)))})")
        if not value:
            raise FilterError(f"{key}: needs a value ({key}:VALUE)")
        values.setdefault(name, []).append(value)
    return build(values, flag=lambda name: next(k for k, v in QUERY_KEYS.items() if v == name)
                 + ":")
