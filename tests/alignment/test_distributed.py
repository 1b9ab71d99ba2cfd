"""``graph_scope="global"`` with two CPU processes (gloo): graphs span the gathered batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from exgra.alignment import AlignmentConfig, MultiGraphAlignment

DIM, PER_RANK, WORLD = 16, 6, 2


def _features(requires_grad: bool = False) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    base = torch.randn(PER_RANK * WORLD, DIM, generator=generator)
    return {
        name: (base + 0.8 * torch.randn(base.shape, generator=generator)).requires_grad_(requires_grad)
        for name in ("image", "response", "caption")
    }


def _module(scope: str) -> MultiGraphAlignment:
    torch.manual_seed(0)
    # No noise or dropout: the single-process reference must see exactly the same costs.
    return MultiGraphAlignment(AlignmentConfig(graph_scope=scope, gumbel_scale=0.0, dropout=0.0), DIM).train()


def _worker(rank: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        full = _features()
        local = {
            name: tensor[rank * PER_RANK : (rank + 1) * PER_RANK].clone().requires_grad_(True)
            for name, tensor in full.items()
        }
        output = _module("global")(local)
        output.loss.backward()
        results[rank] = {
            "loss": float(output.loss.detach()),
            "nodes": output.matchings.shape[-1],
            "grad": torch.cat([tensor.grad for tensor in local.values()]).clone(),
        }
        # The training-mode randomness (noise, dropout) must agree across ranks too.
        torch.manual_seed(100 + rank)
        noisy = MultiGraphAlignment(AlignmentConfig(graph_scope="global"), DIM).train()
        noisy.load_state_dict(_module("global").state_dict())
        results[f"noisy{rank}"] = float(noisy({name: t.detach() for name, t in local.items()}).loss.detach())
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(120)
def test_global_scope_spans_the_gathered_batch() -> None:
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=WORLD, join=True)

    full = _features(requires_grad=True)
    reference = _module("local")(full)
    reference.loss.backward()
    expected_grad = torch.cat([tensor.grad for tensor in full.values()])
    for rank in range(WORLD):
        assert results[rank]["nodes"] == PER_RANK * WORLD
        assert results[rank]["loss"] == pytest.approx(float(reference.loss.detach()), abs=1e-6)
        rows = torch.cat(
            [torch.arange(rank * PER_RANK, (rank + 1) * PER_RANK) + m * PER_RANK * WORLD for m in range(3)]
        )
        # all_gather sums gradients over ranks; every rank holds the same loss, so each local slice
        # gets WORLD × its share (DDP's averaging of parameter gradients then gives the exact gradient).
        assert torch.allclose(results[rank]["grad"], WORLD * expected_grad[rows], atol=1e-6)
    assert results["noisy0"] == results["noisy1"]
    assert expected_grad.abs().sum() > 0
