"""The mesh autoencoder family's one optimiser definition: each method's paper schedule from its hyper-parameters."""

import pytest
import torch

from morphzoo.methods import CoMA, Deep3DMMSpectral, Deep3DMMSpiral, Neural3DMM, SpiralNetPlusPlus
from tests.synthetic import sphere_template

# Two levels on the 162-vertex icosphere (162 / 41 / 11).
LEVELS = {"sampling_factors": (4, 4), "encoder_channels": (8, 8)}
SPIRALS = {"spiral_rings": (1, 1), "spiral_dilation": (1, 1)}
DECODER = {"decoder_channels": (8, 8, 8)}
# The papers' optimisers: CoMA §4 and SpiralNet++ §4.2; Neural3DMM's training setup; Deep3DMM appendix C (as its
# base models).
PAPERS = [
    (CoMA, torch.optim.SGD, {**LEVELS, **DECODER}),
    (SpiralNetPlusPlus, torch.optim.Adam, {**LEVELS, "spiral_dilation": (1, 1)}),
    (Neural3DMM, torch.optim.Adam, {**LEVELS, **DECODER, **SPIRALS}),
    (Deep3DMMSpectral, torch.optim.SGD, {**LEVELS, **DECODER}),
    (Deep3DMMSpiral, torch.optim.Adam, {**LEVELS, **DECODER, **SPIRALS}),
]
# Hyper-parameters unlike every default, so a schedule that ignored them would fail.
SCHEDULE = {"learning_rate": 0.0123, "weight_decay": 0.0042, "lr_decay": 0.9}


@pytest.mark.parametrize("model_class, optimizer_class, options", PAPERS, ids=[c.__name__ for c, *_ in PAPERS])
def test_configure_optimizers_gives_the_papers_schedule_from_the_hyperparameters(model_class, optimizer_class,
                                                                                   options):
    momentum = {"momentum": 0.7} if optimizer_class is torch.optim.SGD else {}
    model = model_class(template=sphere_template(2), **options, **SCHEDULE, **momentum)
    configured = model.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]
    assert type(optimizer) is optimizer_class
    # Every parameter is optimised once; Deep3DMM's feature aggregation (in down/up) without weight decay.
    decay = {}
    for group in optimizer.param_groups:
        assert group["lr"] == SCHEDULE["learning_rate"]
        if momentum:
            assert group["momentum"] == momentum["momentum"]
        decay |= {id(p): group["weight_decay"] for p in group["params"]}
    named = dict(model.named_parameters())
    assert len(decay) == sum(len(group["params"]) for group in optimizer.param_groups) == len(named)
    assert {name: decay[id(p)] for name, p in named.items()} == {
        name: 0.0 if name.startswith(("down.", "up.")) else SCHEDULE["weight_decay"] for name in named}
    assert scheduler["interval"] == "epoch"
    assert isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.ExponentialLR)
    optimizer.step()  # no gradients: leaves the weights, keeps the scheduler from warning about the order
    scheduler["scheduler"].step()
    assert all(group["lr"] == pytest.approx(SCHEDULE["learning_rate"] * SCHEDULE["lr_decay"])
               for group in optimizer.param_groups)
