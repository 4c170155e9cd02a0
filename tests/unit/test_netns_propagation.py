"""Which /run/netns mount a process's paths resolve to (vrouter.host.netns), from mountinfo."""
from vrouter.host.netns import netns_dir_propagation

ROOT = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"


def test_a_single_mount_gives_its_fields():
    text = ROOT + "45 27 0:25 /netns /run/netns rw shared:8 master:1 - tmpfs tmpfs rw\n"
    assert netns_dir_propagation(text) == {"shared": "8", "master": "1"}


def test_of_stacked_mounts_the_one_on_top_counts():
    """As seen on a VM where /run/netns had been bind-mounted three times: the first two carry
    no propagation at all, and reading the first made a node create its namespaces where no
    other node could see them."""
    text = ROOT + (
        "86 56 254:0 /run/netns /run/netns rw,relatime - ext4 /dev/vda rw\n"
        "87 86 254:0 /run/netns /run/netns rw,relatime - ext4 /dev/vda rw\n"
        "88 87 254:0 /run/netns /run/netns rw,relatime shared:8 master:1 - ext4 /dev/vda rw\n"
        "89 88 0:4 net:[4026532174] /run/netns/pod-1 rw shared:9 master:2 - nsfs nsfs rw\n")
    assert netns_dir_propagation(text) == {"shared": "8", "master": "1"}


def test_no_mount_there_gives_nothing():
    assert netns_dir_propagation(ROOT) == {}
    assert netns_dir_propagation(ROOT + "45 27 0:25 /x /run/netns rw - tmpfs tmpfs rw\n") == {}
