"""Distributed training: no unused parameters (DDP without ``find_unused_parameters``),
replicas that stay identical over 2 CPU processes (gloo), and synchronised batch norm.

Norms under DDP: ``NaiveSyncBN`` (Detectron2's ``NaiveSyncBatchNorm``) all-reduces its
statistics with ``torch.distributed`` and so works over gloo on CPU; ``SyncBN``
(``torch.nn.SyncBatchNorm``) needs CUDA (or XPU/HPU) tensors once a process group exists.
"""
from datetime import timedelta

import pytest
import torch
from _tiny_models import PYRAMID_BUILDERS, tiny_cfg, training_input, training_losses
from detectron2.engine import launch
from detectron2.modeling import build_model
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

from bifpn_d2.engine.ema import build_model_ema, unwrap
from bifpn_d2.layers import make_norm

_STEPS = 2


@pytest.mark.parametrize("builder", PYRAMID_BUILDERS)
def test_every_parameter_gets_a_gradient(builder):
    """Each neck, in its detector (RetinaNet or Faster R-CNN), gives every trainable
    parameter a gradient from the detection loss: DDP needs no find_unused_parameters."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(builder)).train()
    # batch 2: with one 96x128 image, P7 (1x1) would leave BN one value per channel
    losses = training_losses(model, [training_input(96, 128, num_boxes=3, seed=s) for s in range(2)])
    sum(losses.values()).backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters without gradient: {unused}"
    fusion_weights = [n for n, _ in model.named_parameters() if "fusion" in n]
    assert fusion_weights  # the learnable fusions are among the checked parameters


def _train_replica(norm: str, rank: int) -> dict:
    """``_STEPS`` SGD steps of a DDP-wrapped RetinaNet-BiFPN, each rank on its own images."""
    torch.manual_seed(0)
    cfg = tiny_cfg("build_retinanet_resnet_bifpn_backbone")
    cfg.MODEL.BIFPN.NORM = norm
    # Plain cells: every parameter moves from the first step (a residual cell's zero-scaled
    # output norms hold back the convs before them until their scales have moved).
    cfg.MODEL.BIFPN.RESIDUAL = False
    model = build_model(cfg).train()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    # broadcast_buffers=False: batch-norm statistics agree across ranks only if the norm syncs.
    ddp = DistributedDataParallel(model, find_unused_parameters=False, broadcast_buffers=False)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    ema = build_model_ema(ddp, decay=0.5)  # what the trainer keeps with MODEL_EMA.ENABLED
    for step in range(_STEPS):
        batch = [training_input(64, 96, seed=1000 * (rank + 1) + 10 * step + i) for i in range(2)]
        losses = training_losses(ddp, batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        ema.update(unwrap(ddp), step=step + 1)
    params = [name for name, _ in model.named_parameters()]
    return {"initial": initial, "final": model.state_dict(), "params": params, "ema": ema.module.state_dict()}


def _ddp_worker(out_dir: str) -> None:
    torch.set_num_threads(1)  # two processes share the CPU cores
    rank = comm.get_rank()
    result = {norm: _train_replica(norm, rank) for norm in ("NaiveSyncBN", "BN")}
    try:
        make_norm("SyncBN", 4).train()(torch.randn(2, 4, 3, 3))
        result["syncbn_error"] = None
    except ValueError as e:
        result["syncbn_error"] = str(e)
    torch.save(result, f"{out_dir}/rank{rank}.pt")


def test_ddp_two_cpu_processes(tmp_path):
    """2 processes over gloo (Detectron2's ``launch``, as tools/train_net.py uses it)."""
    launch(_ddp_worker, 2, dist_url=f"file://{tmp_path}/dist_init", args=(str(tmp_path),),
           timeout=timedelta(seconds=60))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for norm in ("NaiveSyncBN", "BN"):
        first, second = ranks[0][norm]["final"], ranks[1][norm]["final"]
        initial = ranks[0][norm]["initial"]
        params = ranks[0][norm]["params"]
        changed = [k for k in params if not torch.equal(first[k], initial[k])]
        # (the coarse output nodes of the last cell get gradients of ~1e-9 from the focal
        # loss's easy negatives at this init, too small to move float32 weights)
        assert len(changed) > 0.8 * len(params), f"{norm}: {len(changed)}/{len(params)} parameters trained"
        differing = [k for k in params if not torch.equal(first[k], second[k])]
        assert not differing, f"{norm}: replicas diverged in {differing[:5]}"
        # The weight EMA of each rank follows identical weights: identical, and not the weights.
        ema_first, ema_second = ranks[0][norm]["ema"], ranks[1][norm]["ema"]
        assert all(torch.equal(ema_first[k], ema_second[k]) for k in params), norm
        assert any(not torch.equal(ema_first[k], first[k]) for k in params), norm
        stats = [k for k in first if "cells" in k and k.endswith("running_mean")]
        assert stats and all(not torch.equal(first[k], initial[k]) for k in stats)
        synced = [torch.equal(first[k], second[k]) for k in stats]
        # NaiveSyncBN averages the statistics over both ranks' images; BN keeps its own.
        assert all(synced) if norm == "NaiveSyncBN" else not any(synced), norm
    for rank in ranks:
        assert "expected input tensor to be on GPU" in rank["syncbn_error"]
