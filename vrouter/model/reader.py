"""Typed readers of YAML/JSON documents that know where they are: every problem becomes a
ConfigError naming the file, the field path and what is wrong."""
from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import yaml

from vrouter.model.names import DNS_LABEL
from vrouter.model.types import ConfigError

MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")   # \Z: $ matches before a newline


class Reader:
    def __init__(self, path: str):
        self.path = path

    def fail(self, where: str, problem: str):
        raise ConfigError(self.path, where, problem)

    def mapping(self, value, where, allowed, required=()):
        if not isinstance(value, dict):
            self.fail(where, f"must be a mapping, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                self.fail(join(where, str(key)), f"unknown field (allowed here: {hint})")
        for key in required:
            if key not in value:
                self.fail(join(where, key), "required field is missing")
        return value

    def integer(self, value, where, low, high):
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(where, f"must be an integer, got {value!r}")
        if not low <= value <= high:
            self.fail(where, f"{value} is out of range {low}..{high}")
        return value

    def string(self, value, where, pattern=None, what="a string"):
        if not isinstance(value, str) or not value:
            self.fail(where, f"must be {what}, got {value!r}")
        if pattern is not None and not pattern.match(value):
            self.fail(where, f"{value!r} is not {what}")
        return value

    def network(self, value, where, strict=True):
        """An IPv4 CIDR; with `strict` False host bits may be set (Kubernetes' ipBlock)."""
        if not isinstance(value, str):
            self.fail(where, f"must be an IPv4 CIDR such as 10.244.0.0/16, got {value!r}")
        try:
            return ipaddress.IPv4Network(value, strict=strict)
        except ValueError as exc:
            self.fail(where, f"{value!r} is not a valid IPv4 CIDR ({exc})")

    def address(self, value, where):
        try:
            return ipaddress.IPv4Address(value)
        except ValueError:
            self.fail(where, f"{value!r} is not a valid IPv4 address")

    def labels(self, raw, where) -> tuple[tuple[str, str], ...]:
        """Kubernetes labels (or matchLabels): a mapping of strings."""
        if not isinstance(raw, dict):
            self.fail(where, "must be a mapping of label names to values")
        for key, value in raw.items():
            if not isinstance(key, str) or not isinstance(value, (str, int, float, bool)):
                self.fail(join(where, str(key)), "label names and values must be strings")
        return tuple(sorted((k, str(v)) for k, v in raw.items()))

    def metadata(self, doc, where, namespaced=True):
        """A Kubernetes object's (metadata, name, namespace); the rest of metadata (uid,
        annotations...) is ignored. A cluster-scoped object's namespace is None."""
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or "name" not in meta:
            self.fail(f"{where}.metadata", "must be a mapping with a name")
        name = self.string(meta["name"], f"{where}.metadata.name", DNS_LABEL, "a DNS label")
        namespace = None
        if namespaced:
            namespace = self.string(meta.get("namespace", "default"),
                                    f"{where}.metadata.namespace", DNS_LABEL, "a DNS label")
        return meta, name, namespace

    def mac(self, value, where):
        value = self.string(value, where, MAC, "a MAC address such as 0e:76:0a:f4:01:00")
        if int(value[:2], 16) & 1:
            self.fail(where, f"{value} is a multicast MAC address")
        return value.lower()


def join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read file: {exc.strerror}") from None


def documents(text: str, path: str) -> list:
    """The YAML documents of a text (empty ones left out)."""
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, where, f"invalid YAML: {reason}") from None
    except RecursionError:
        raise ConfigError(path, "", "invalid YAML: nested too deeply") from None
