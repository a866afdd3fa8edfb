"""scaling.compile: the model and its loss traced as one graph, equal to eager, without a
recompile per step although the loss's epoch (dr's margin warm-up) changes every step.

The graphs run on torch's ``aot_eager`` backend: it traces what inductor would compile
(forward and backward through AOTAutograd) and runs the traced ops, so these tests check
ltray's side (no graph break, few graphs, the same numbers) in seconds, not inductor's code
generation, which is torch's and takes minutes of C++ compiling on 2 cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from ltray.config import LossConfig
from ltray.losses import build_loss, uniformity
from ltray.models import Classifier, build_head
from ltray.train.train_module import TrainModule, compile_failures_named, compile_step

COUNTS = [500, 160, 50, 16, 5]
BACKEND = "aot_eager"


class _Backbone(nn.Module):
    feature_dim = 16

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x)).relu().mean((2, 3))


def _module(loss: LossConfig) -> TrainModule:
    torch.manual_seed(0)
    criterion = build_loss(loss, COUNTS)
    head = build_head(criterion.head_kind, _Backbone.feature_dim, len(COUNTS))
    return TrainModule(Classifier(_Backbone(), head), criterion)


def _train(module: TrainModule, epochs: list[float]) -> tuple[list[torch.Tensor], dict]:
    """Losses of one SGD step at each epoch value, and the parameters after them."""
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    losses = []
    for epoch in epochs:
        images = torch.randn(8, 3, 8, 8, generator=g)
        labels = torch.randint(0, len(COUNTS), (8,), generator=g)
        module.criterion.set_epoch(epoch)
        out = module(images, labels)
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        optimizer.step()
        losses.append(out.total.detach())
    return losses, {k: v.detach().clone() for k, v in module.state_dict().items()}


# dr with the prior, a learned ring radius (initialised at the first step) and the margin's
# warm-up ending at epoch 2: the steps cross it
DR = LossConfig(name="dr", prior_tau=1.0, margin_warmup_epochs=2.0)
EPOCHS = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]


@pytest.mark.parametrize(
    "loss", [DR, LossConfig(name="ce"), LossConfig(name="ldam_drw", drw_epoch=1)]
)
def test_the_compiled_step_trains_as_eager_with_few_graphs(loss):
    eager_losses, eager_state = _train(_module(loss), EPOCHS)
    torch._dynamo.reset()
    counters.clear()
    module = _module(loss)
    compile_step(module, backend=BACKEND)
    losses, state = _train(module, EPOCHS)

    assert counters["stats"]["unique_graphs"] >= 1  # it was traced, not run eager
    assert not counters["graph_break"], dict(counters["graph_break"])
    # the epoch changes every step: a graph a step would be 8; torch marks the float dynamic
    # after it first changes, and the warm-up's end, the radius's initialisation and DRW's
    # start are one recompile each at most
    assert counters["stats"]["unique_graphs"] <= 5
    # the same ops in the same order (aot_eager): equal up to float32 rounding in reductions
    torch.testing.assert_close(torch.stack(losses), torch.stack(eager_losses))
    torch.testing.assert_close(state, eager_state)


def test_the_uniformity_term_leaves_its_block_pass_to_the_enclosing_graph(monkeypatch):
    """Inside a compiled step the term does not call its own torch.compile'd pass (a nested
    compile with its fall-back), even where it would fuse it: the step's graph fuses it."""

    def nested(*args):
        raise AssertionError("the uniformity term compiled its own pass inside a compiled step")

    monkeypatch.setattr(uniformity, "_compiled_block_energy", lambda: nested)
    w = torch.randn(12, 6, requires_grad=True)

    def term(weight):
        return uniformity.uniformity_loss(weight, "mhe_s2", block_rows=5, fused=True)

    torch._dynamo.reset()
    compiled = torch.compile(term, backend=BACKEND, fullgraph=True)(w)
    eager = uniformity.uniformity_loss(w, "mhe_s2", block_rows=5, fused=False)
    torch.testing.assert_close(compiled, eager)
    with pytest.raises(AssertionError, match="own pass"):  # the stub is what fused=True calls
        term(w)


def test_a_compile_this_host_cannot_build_is_one_error_naming_the_option(tmp_path):
    """The real failure, inductor without a C++ compiler, in a fresh process (a process that
    has compiled once keeps its compiler check, and the cache on disk could skip it)."""
    script = """
import torch
from ltray.config import LossConfig
from ltray.train.train_module import compile_failures_named, compile_step
import tests.train.test_compiled_step as t

module = t._module(LossConfig(name="dr"))
compile_step(module)
with compile_failures_named():
    module(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])).total.backward()
"""
    env = {
        **os.environ,
        "CXX": str(tmp_path / "no-such-compiler"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        "TORCHINDUCTOR_FX_GRAPH_CACHE": "0",
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=Path(__file__).parents[2],  # the checkout: tests/ imports as a package from it
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ltray.errors.LtrayError: scaling.compile: torch.compile could not")
    assert "no-such-compiler" in last and "--set scaling.compile=false" in last


@pytest.mark.parametrize(
    "error",
    [RuntimeError("CUDA out of memory"), ValueError("a wrong shape")],
    ids=["runtime", "value"],
)
def test_errors_of_the_step_itself_pass_unchanged(error):
    with pytest.raises(type(error), match=str(error)):
        with compile_failures_named():
            raise error


def test_an_error_raised_while_tracing_the_computation_is_not_called_a_compile_failure():
    from torch._dynamo.exc import TorchRuntimeError

    with pytest.raises(TorchRuntimeError):
        with compile_failures_named():
            raise TorchRuntimeError("size mismatch")
