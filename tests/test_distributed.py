"""Distributed data parallel: a small conv net with groupnorm_ext.GroupNorm trained a few steps under
torch.nn.parallel.DistributedDataParallel (gloo, 2 processes on the CPU, different data per rank) ends with
the same parameters as the same net with torch.nn.GroupNorm, and both ranks hold identical replicas."""
import os
import socket
import tempfile
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import groupnorm_ext

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with the gloo backend")

WORLD_SIZE = 2
STEPS = 4


def make_model(kind):
    GN = groupnorm_ext.GroupNorm if kind == "ext" else nn.GroupNorm
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), GN(4, 16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, stride=2), GN(8, 16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10), GN(2, 10),
    )


def train(kind, rank, channels_last=False):
    torch.manual_seed(0)                                  # same initial weights for both kinds, every rank
    model = make_model(kind)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    for step in range(STEPS):
        gen = torch.Generator().manual_seed(1000 + 10 * step + rank)   # each rank its own batch
        x = torch.randn(4, 3, 12, 12, generator=gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = torch.randn(4, 10, generator=gen)
        loss = F.mse_loss(ddp(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return initial, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank, world_size, port, out_path):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        results = {f"{kind}{'_cl' if cl else ''}": train(kind, rank, cl)
                   for kind in ("ext", "torch") for cl in (False, True)}
        gathered = [None] * world_size
        dist.all_gather_object(gathered, results)
        if rank == 0:
            torch.save(gathered, out_path)
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_training_matches_torch_group_norm():
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "result.pt")
        for attempt in range(3):       # a port grabbed by someone else between free_port() and bind
            try:
                mp.spawn(_worker, args=(WORLD_SIZE, free_port(), out_path), nprocs=WORLD_SIZE, join=True)
                break
            except mp.ProcessRaisedException as e:
                if "address already in use" not in str(e).lower() or attempt == 2:
                    raise
        gathered = torch.load(out_path)

    assert len(gathered) == WORLD_SIZE
    for variant in ("", "_cl"):
        ext_init, ext_final = gathered[0]["ext" + variant]
        ref_init, ref_final = gathered[0]["torch" + variant]
        assert ext_init.keys() == ref_init.keys(), "state_dict keys differ from nn.GroupNorm's"
        for k in ext_init:
            assert torch.equal(ext_init[k], ref_init[k]), f"initial {k} differs"
        changed = [k for k in ext_init if not torch.equal(ext_init[k], ext_final[k])]
        assert len(changed) == len(ext_init), f"some parameters did not train: {set(ext_init) - set(changed)}"
        for k in ext_final:
            torch.testing.assert_close(ext_final[k], ref_final[k], atol=1e-5, rtol=1e-4,
                                       msg=lambda m, k=k: f"{variant or 'contiguous'}: final {k}: {m}")
        # DDP keeps the replicas in sync: every rank ends with the same bits
        for rank in range(1, WORLD_SIZE):
            for kind in ("ext", "torch"):
                for k, v in gathered[0][kind + variant][1].items():
                    assert torch.equal(v, gathered[rank][kind + variant][1][k]), f"rank {rank} {kind}{variant} {k}"
