"""vrouter: a packet-level userspace router that emulates Kubernetes pod networking."""
__version__ = "0.1.0"
