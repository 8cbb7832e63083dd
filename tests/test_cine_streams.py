"""Many cines per step: cines of different lengths and sizes stepped together give the labels of one by one."""

from __future__ import annotations

import pytest
import torch

from scripts.cine_streams import CineStreams
from scripts.gdkvm import GDKVM


@pytest.fixture(scope="module")
def net() -> GDKVM:
    torch.manual_seed(0)
    return GDKVM(size="small", out_channels=2).eval()


def test_cines_joining_and_leaving_get_the_logits_of_one_by_one(net) -> None:
    generator = torch.Generator().manual_seed(1)
    shapes = [(48, 40, 7), (48, 40, 3), (32, 32, 5), (48, 40, 11), (48, 40, 1), (32, 32, 4), (48, 40, 6)]
    cines = {f"c{i}": torch.rand(1, *shape, generator=generator) for i, shape in enumerate(shapes)}
    streams = CineStreams(net, capacity=3, backend="eager")
    finished = []
    for key, video in cines.items():
        finished += streams.add(key, video, payload=key.upper())
        assert streams.pending <= 3 * 2  # at most `capacity` per frame size
    finished += streams.drain()
    assert sorted(f.key for f in finished) == sorted(cines) and streams.pending == 0
    with torch.no_grad():
        for cine in finished:
            alone = net(cines[cine.key][None])[0]  # [K, H, W, T], GDKVM.forward one cine at a time
            assert cine.payload == cine.key.upper() and cine.logits.shape == alone.shape
            torch.testing.assert_close(cine.logits, alone, rtol=1e-4, atol=1e-4)
            assert torch.equal(cine.logits.argmax(0), alone.argmax(0))


def test_a_full_stepper_steps_until_a_slot_is_free(net) -> None:
    streams = CineStreams(net, capacity=2, backend="eager")
    assert streams.add("long", torch.rand(1, 32, 32, 6)) == []
    assert streams.add("short", torch.rand(1, 32, 32, 2)) == []
    done = streams.add("third", torch.rand(1, 32, 32, 3))  # no free slot: "short" ends after 2 steps
    assert [f.key for f in done] == ["short"] and set(streams.active) == {"long", "third"}
    assert [f.key for f in streams.drain()] == ["third", "long"]  # "third" joined 2 frames later, 3 shorter
    with pytest.raises(ValueError, match=r"\[1, H, W, T\]"):
        streams.add("bad", torch.rand(32, 32, 3))
