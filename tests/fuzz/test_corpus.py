"""Every input of the seed corpus, and every reproducer of a finding (corpus/TARGET/finding-*),
through its target's checks, in this process: what a fuzzer once found stays fixed."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parent / "corpus"
INPUTS = sorted((d.name, f.name) for d in CORPUS.iterdir() if d.is_dir() for f in d.iterdir())


def test_every_target_has_seeds():
    targets = {t for t, _ in INPUTS}
    assert targets == {"pod_frames", "overlay_datagrams", "dns_query", "control_request",
                       "cni_call", "cluster_file"}
    assert all(sum(1 for t, _ in INPUTS if t == target) >= 5 for target in targets)


@pytest.mark.parametrize("target, name", INPUTS, ids=[f"{t}/{n}" for t, n in INPUTS])
def test_corpus_input_passes_its_checks(target, name):
    module = importlib.import_module(f"tests.fuzz.{target}")
    module.check((CORPUS / target / name).read_bytes())
