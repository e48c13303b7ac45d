"""The device check every operator runs before it touches a tensor (Python side).

The compiled kernels run the same check in C++ (``csrc/ops/common/check.h``), but a
call never reaches them when one argument lives on another device: the dispatcher
picks the kernel of the highest-priority device among the arguments, so one ``meta``
tensor among CPU tensors sends the whole call to the fake (meta) kernel, which would
return uninitialised CPU tensors, and one CUDA tensor among CPU tensors sends it to the
CUDA kernel (the plain-PyTorch reference until CUDA kernels exist). So the fake
kernels, the references and the CUDA fallbacks all call :func:`check_same_device`
first; its message matches the C++ one word for word.
"""
from __future__ import annotations

from typing import Iterable, Sequence, Union

from torch import Tensor

__all__ = ["check_same_device", "check_host_tensor"]

Arg = Union[Tensor, Sequence[Tensor], None]


def _named(args: dict[str, Arg]) -> Iterable[tuple[str, Tensor]]:
    for name, value in args.items():
        if value is None:
            continue
        if isinstance(value, Tensor):
            yield name, value
        else:
            for i, t in enumerate(value):
                if t is not None:
                    yield f"{name}[{i}]", t


def check_same_device(op: str, **args: Arg) -> None:
    """Raise RuntimeError unless every tensor in ``args`` (a tensor, a list of tensors
    or None, by argument name, in schema order) is on the device of the first one.

    The message names the operator, the argument and both devices, like torch's own
    "Expected all tensors to be on the same device".
    """
    first: tuple[str, Tensor] | None = None
    for name, t in _named(args):
        if first is None:
            first = (name, t)
        elif t.device != first[1].device:
            raise RuntimeError(
                f"{op}: expected all tensors to be on the same device, but argument '{name}' is "
                f"on {t.device} while '{first[0]}' is on {first[1].device}")


def check_host_tensor(op: str, name: str, t: Tensor | None) -> None:
    """Raise RuntimeError unless ``t`` (a scalar the kernels read on the host, such as a
    dropout seed) is None or a CPU tensor."""
    if t is not None and t.device.type != "cpu":
        raise RuntimeError(f"{op}: argument '{name}' must be a CPU tensor (it is read on the "
                           f"host, whatever the device of the other arguments), got {t.device}")
