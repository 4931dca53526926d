"""Pod IPs of the local runner: unique among live pods, stable per pod, not reused at once."""

from __future__ import annotations

import ipaddress

import pytest

from kubetune_dev.local_pod_network import PodAddresses


def test_pods_get_distinct_addresses_that_stay_theirs() -> None:
    addresses = PodAddresses(ipaddress.IPv4Network("198.19.0.0/16"), randomize=False)
    first, second = addresses.allocate("a"), addresses.allocate("b")
    assert (first, second) == ("198.19.0.1", "198.19.0.2")
    assert addresses.allocate("a") == first  # a container restart asks again: same IP


def test_a_freed_address_is_not_handed_out_again_at_once() -> None:
    addresses = PodAddresses(ipaddress.IPv4Network("198.19.0.0/16"))
    freed = addresses.allocate("a")
    addresses.release("a")
    assert addresses.allocate("b") != freed


def test_a_pod_keeps_its_address_across_a_runner_restart_when_free() -> None:
    addresses = PodAddresses(ipaddress.IPv4Network("198.19.0.0/16"))
    assert addresses.allocate("a", preferred="198.19.3.4") == "198.19.3.4"
    assert addresses.allocate("b", preferred="198.19.3.4") != "198.19.3.4"  # taken
    assert addresses.allocate("c", preferred="127.0.0.1") != "127.0.0.1"  # not ours


def test_the_network_wraps_around_and_can_run_out() -> None:
    addresses = PodAddresses(ipaddress.IPv4Network("198.19.0.0/30"), randomize=False)  # two usable
    assert addresses.allocate("a") == "198.19.0.1"
    assert addresses.allocate("b") == "198.19.0.2"
    with pytest.raises(RuntimeError, match="no free pod IP"):
        addresses.allocate("c")
    addresses.release("a")
    assert addresses.allocate("c") == "198.19.0.1"


def test_two_runners_on_one_host_start_at_different_addresses() -> None:
    """Dev clusters side by side share the loopback route: their first pods must not collide."""
    firsts = {PodAddresses(ipaddress.IPv4Network("198.19.0.0/16")).allocate("a") for _ in range(20)}
    assert len(firsts) > 1
