# -*- coding: utf-8 -*-
"""make scale's kernel limits (tests/testfleet/lighthost.py): the neighbour table's three thresholds are raised for the
fleet's size and put back afterwards, on files standing in for /proc/sys/net/ipv4/neigh/default/gc_thresh{1,2,3}."""

import os

from testfleet import lighthost


def thresholds(tmp_path, values):
    for index, value in zip((1, 2, 3), values):
        (tmp_path / ("gc_thresh%d" % index)).write_text("%d\n" % value)
    return str(tmp_path / "gc_thresh%d")


def read(template):
    return [int(open(template % index).read()) for index in (1, 2, 3)]


def test_arp_broadcast_storm_gc_thresh1_raised_so_entries_are_kept(tmp_path):
    """Above gc_thresh1 the kernel collects every neighbour entry unused for a minute, and the next packet needs a
    broadcast ARP request that the software bridge copies to every light host: all three thresholds are raised."""
    template = thresholds(tmp_path, (128, 512, 1024))
    needed = lighthost.neighbour_entries_needed(450)
    changed = lighthost.raise_neighbour_limits(450, thresh=template)
    assert read(template) == [2 * needed, 2 * needed, 4 * needed]
    assert sorted(changed) == [template % 1, template % 2, template % 3]

    state_root = tmp_path / "state"
    state_root.mkdir()
    lighthost.restore_limits(changed, str(state_root), "scale")
    assert read(template) == [128, 512, 1024]


def test_limits_never_lowered_and_a_value_changed_since_is_left(tmp_path):
    """A machine with higher limits keeps them; a value someone changed after the raise is not put back."""
    template = thresholds(tmp_path, (10 ** 7, 512, 1024))
    changed = lighthost.raise_neighbour_limits(20, thresh=template)
    assert template % 1 not in changed and read(template)[0] == 10 ** 7
    with open(template % 3, "w") as handle:
        handle.write("99999\n")
    state_root = tmp_path / "state"
    os.mkdir(str(state_root))
    lighthost.restore_limits(changed, str(state_root), "scale")
    assert read(template) == [10 ** 7, 512, 99999]
