"""The names the kernel, CNI and Kubernetes accept: one rule each, for the cluster file, the node
and vrouter-cni alike (no heavy imports: the plugin starts with this).

Each `*_problem` returns None for a good name, else what is wrong with it.
"""
from __future__ import annotations

import re

IFNAMSIZ = 16        # the kernel's interface-name buffer, NUL included
DNS_LABEL_MAX = 63
# \Z, not $: $ also matches before a final newline ("web-1\n" would pass)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
# CNI: a container id and a network name start with an alphanumeric, then [A-Za-z0-9_.-]
CNI_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*\Z")


def interface_problem(name) -> str | None:
    """An interface name as the CNI spec and the kernel (dev_valid_name) take it: not empty, at
    most IFNAMSIZ-1 bytes, not "." or "..", no "/", ":" or whitespace. "%" is refused too: the
    kernel reads it as a template (eth%d) and would pick another name than the one asked."""
    if not isinstance(name, str) or not name:
        return "is empty"
    size = len(name.encode(errors="surrogateescape"))
    if size >= IFNAMSIZ:
        return f"is {size} bytes long, the kernel allows at most {IFNAMSIZ - 1}"
    if name in (".", ".."):
        return "may not be \".\" or \"..\""
    bad = sorted({c for c in name if c in "/:%\0" or c.isspace()})
    if bad:
        return f"may not contain {', '.join(repr(c) for c in bad)}"
    return None


def cni_name_problem(name) -> str | None:
    """A CNI container id or network name: ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$."""
    if not isinstance(name, str) or not name:
        return "is empty"
    if not CNI_NAME.match(name):
        return "must start with a letter or digit, followed by letters, digits, '_', '.' or '-'"
    return None


def dns_label_problem(name) -> str | None:
    """A DNS label (RFC 1123), as Kubernetes and vrouter name pods and namespaces."""
    if not isinstance(name, str) or not name:
        return "is empty"
    if len(name) > DNS_LABEL_MAX:
        return f"is {len(name)} characters long, a DNS label has at most {DNS_LABEL_MAX}"
    if not DNS_LABEL.match(name):
        return "is not a DNS label (lowercase letters, digits and '-', a letter or digit at " \
               "each end)"
    return None


def pod_name_for_container(container_id: str) -> str:
    """The pod name of a container that no K8S_POD_NAME names: ctr- and the id's first 12
    characters, lowercased, with what a DNS label may not hold turned into '-'."""
    short = re.sub(r"[^a-z0-9-]", "-", container_id[:12].lower()).strip("-")
    return f"ctr-{short}" if short else "ctr"
