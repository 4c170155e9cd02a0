"""Linking the stages that can be skipped into a node's tables (fastpath.stages.link): forward
runs such a stage's code from tables.code, it is left out while no table needs it, and a missing
one drops the frame and counts it rather than crashing the node."""
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from fastpath.reasons import R_DROP_POLICY_INGRESS, R_DROP_STAGE_UNLINKED, R_FORWARDED_L2
from fastpath.stages import S_POLICY, STAGES
from fastpath.stages.link import link
from vrouter.model import config
from vrouter.node.compiling import needed_stages

from tests.fastpath.test_services import A_IP, A_MAC, B_IP, B_MAC, make_dp
from tests.harness import process

CLOSED = ("\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
          "metadata: {name: closed}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n")


def syn(sport: int) -> bytes:
    return bytes(Ether(src=A_MAC, dst=B_MAC) / IP(src=A_IP, dst=B_IP)
                 / TCP(sport=sport, dport=8080, flags="S"))


def test_the_policy_stage_is_linked_only_once_a_policy_selects_a_pod():
    """Only a stage that can be skipped is called through tables.code (the others are
    compiled into forward): the policy stage, left out until a policy needs it."""
    assert [s.name for s in STAGES if s.linked] == ["policy"]
    dp = make_dp()
    assert dp.tables.policy.active[0] == 0
    assert not dp.tables.code.any()
    assert process(dp, [(0, syn(40000))])[0][0] == 1            # web-2's port
    assert dp.counters[R_FORWARDED_L2] == 1
    # the same cluster with a policy isolating every pod, as a reload brings it
    dp.reload(config.parse(open("configs/demo.yaml").read() + CLOSED, "demo.yaml",
                           check_host=False))
    assert dp.tables.policy.active[0] == 1 and dp.tables.code[S_POLICY] != 0
    assert process(dp, [(0, syn(40001))]) == []
    assert dp.counters[R_DROP_POLICY_INGRESS] == 1


def test_a_stage_needed_but_not_linked_drops_the_frame_and_counts_it():
    dp = make_dp(CLOSED)
    assert dp.tables.code[S_POLICY] != 0
    dp.tables.code[S_POLICY] = 0   # as if linking had been skipped
    assert process(dp, [(0, syn(40000))]) == []
    assert dp.counters[R_DROP_STAGE_UNLINKED] == 1
    assert dp.counters[R_FORWARDED_L2] == 0
    assert link(dp.tables, dp.rx) == ["policy"]   # linked again: the frame is judged
    assert process(dp, [(0, syn(40001))]) == []
    assert dp.counters[R_DROP_POLICY_INGRESS] == 1 and dp.counters[R_DROP_STAGE_UNLINKED] == 1


def test_a_first_compile_leaves_out_the_policy_stage_only_when_no_policy_exists():
    demo = config.load("configs/demo.yaml", check_host=False)
    policies = config.load("configs/policies.yaml", check_host=False)
    everything = [s.name for s in STAGES]
    assert needed_stages(demo) == [n for n in everything if n != "policy"]
    assert needed_stages(policies) == everything
    assert needed_stages(None) == everything
