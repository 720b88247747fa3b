"""What every loader shares (data/batching.py): seeds mixed from several numbers, the CPU generator seeded and given
back, the global batch split over ranks, strict data, tensors to the device."""

import pytest
import torch

from resnets.data.batching import check_batch_split, mix_seed, refuse_if_strict, seeded_cpu_rng, to_device
from resnets.errors import ResnetsError


def test_mix_seed_is_a_pure_63_bit_function_that_separates_neighbours():
    seeds = {mix_seed(s, e, i) for s in range(3) for e in range(3) for i in range(50)}
    assert len(seeds) == 450 and all(0 <= s < 2**63 for s in seeds)
    assert mix_seed(1, 2, 3) == mix_seed(1, 2, 3) and mix_seed(1, 2, 3) != mix_seed(3, 2, 1)
    bits = [bin(mix_seed(0, 0, i) ^ mix_seed(0, 0, i + 1)).count("1") for i in range(200)]
    assert 25 < sum(bits) / len(bits) < 38  # neighbours differ in about half of their bits


def test_seeded_cpu_rng_seeds_the_block_and_gives_the_generator_back():
    torch.manual_seed(123)
    expected_after = torch.rand(3)
    torch.manual_seed(123)
    with seeded_cpu_rng(7):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected_after)  # as if the block had not drawn at all
    torch.manual_seed(7)
    assert torch.equal(inside, torch.rand(3))


def test_batch_split_and_strict_data_refuse_in_one_line():
    check_batch_split(256, 8)
    with pytest.raises(ResnetsError, match="batch size 100 does not split evenly over 8 processes"):
        check_batch_split(100, 8)
    refuse_if_strict([("a.jpg", "truncated")], strict=False)
    refuse_if_strict([], strict=True)
    with pytest.raises(ResnetsError, match="unreadable image a.jpg: truncated \\(strict data is on\\)"):
        refuse_if_strict([("a.jpg", "truncated"), ("b.jpg", "empty")], strict=True)


def test_to_device_makes_tensors_of_values():
    t = to_device([1, 2, 3], torch.device("cpu"))
    assert t.dtype == torch.long and t.tolist() == [1, 2, 3]
    x = torch.ones(2)
    assert to_device(x, torch.device("cpu")) is x
    assert to_device([0.5], torch.device("cpu"), torch.float32).dtype == torch.float32
