"""Telling a torch.compile that cannot build on this host from an error of the computation."""

from __future__ import annotations


def is_compile_failure(exc: BaseException) -> bool:
    """True for what torch.compile raises when it cannot build the kernels on this host (no
    C++ compiler, no Triton, a construct it does not support). Errors of the computation
    itself are not among them: eager would raise them too (torch wraps those raised while
    tracing in TorchRuntimeError), so callers let them propagate."""
    from torch._dynamo.exc import TorchDynamoException, TorchRuntimeError
    from torch._inductor.exc import CppCompileError, InvalidCxxCompiler

    if isinstance(exc, TorchRuntimeError):
        return False
    return isinstance(exc, (TorchDynamoException, CppCompileError, InvalidCxxCompiler))
