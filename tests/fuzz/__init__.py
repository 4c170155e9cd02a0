"""Fuzz targets (atheris) and property tests (hypothesis) for every parser vrouter has.

    python3 -m tests.fuzz.TARGET [libFuzzer flags] [CORPUS_DIR ...]    (see runner.py)

Targets: pod_frames, overlay_datagrams (the fast path, with GSO super-frames and GRO trains),
dns_query, control_request, cni_call, cluster_file. Seeds: corpus/TARGET/ (make_corpus.py).
"""
