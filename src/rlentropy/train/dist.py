"""Process-group helpers of the trainer, on top of `accelerate`.

With one process every helper is the identity. With several (`accelerate launch`), each process
holds its own rows of the step's batch; whole-batch quantities (advantages, controls, metrics) are
computed on rows gathered from every process, and each process then keeps its own slice.
Gradients are synchronised by DDP (`sum_gradients_hook`) or FSDP2 (`shard_fsdp`), during backward.
"""

# No `from __future__ import annotations`: DDP checks the communication hook's annotations as objects.
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as torch_dist


def sum_gradients_hook(state: Any, bucket: torch_dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook that SUMS gradients over processes (DDP's default averages).

    Every process's loss is normalised by counts summed over all processes (global tokens / sequences),
    so the update of the whole batch is the sum of the per-process gradients, not their mean. Register
    with `ddp_model.register_comm_hook(state=None, hook=sum_gradients_hook)`.
    """
    group = state if state is not None else torch_dist.group.WORLD
    work = torch_dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


class Dist:
    """Gather / slice / sum over the processes of an `accelerate.Accelerator`.

    Args:
        acc: the accelerator.
    """

    def __init__(self, acc: Any) -> None:
        self.acc = acc
        self.world = acc.num_processes
        self.rank = acc.process_index
        self.device = acc.device
        self.is_main = acc.is_main_process

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate a [b, ...] tensor over processes along dim 0 (dim 1 padded with zeros)."""
        if self.world == 1:
            return x
        if x.dim() >= 2:
            x = self.acc.pad_across_processes(x.contiguous(), dim=1, pad_index=0)
        return self.acc.gather(x.contiguous())

    def local_rows(self, x: torch.Tensor, b_local: int, t_local: int | None = None) -> torch.Tensor:
        """This process's rows of a gathered [B, ...] tensor (trimmed back to its own T)."""
        if self.world == 1:
            return x
        out = x[self.rank * b_local : (self.rank + 1) * b_local]
        return out[:, :t_local] if (t_local is not None and out.dim() >= 2) else out

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of `x` over processes (on this process's device)."""
        if self.world == 1:
            return x
        return self.acc.reduce(x.to(self.device).clone(), reduction="sum")

    def barrier(self) -> None:
        if self.world > 1:
            self.acc.wait_for_everyone()


def shard_fsdp(forward: torch.nn.Module, policy: torch.nn.Module) -> torch.nn.Module:
    """Shard parameters, gradients and optimizer states over the processes with PyTorch FSDP2.

    Every decoder layer (the classes in the model's `_no_split_modules`) and then the root module
    (`forward`, whose forward runs the whole training statistics) become `fully_shard` units. Gradients
    are reduce-scattered as SUMS (`set_force_sum_reduction_for_comms`, divide factor 1), like the DDP
    hook: every loss already carries global counts. Works on CPU (gloo) and GPU (NCCL).

    Args:
        forward: the `PolicyForward` module (the root). policy: the causal LM inside it.

    Returns:
        `forward`, sharded in place.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    names = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in policy.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"train.distributed=fsdp: {type(base).__name__} declares no decoder-layer class "
            "(_no_split_modules) to shard"
        )
    for layer in layers:
        fully_shard(layer)
    fully_shard(forward)
    for m in forward.modules():
        if isinstance(m, FSDPModule):
            m.set_force_sum_reduction_for_comms(True)
            m.set_gradient_divide_factor(1.0)
    # FSDP2 takes the first module to run forward as its root: run the root once on a two-token dummy
    # so that generation, which calls the decoder layers directly, never claims a layer as the root.
    device = next(p for p in forward.parameters()).device
    ids = torch.zeros(1, 2, dtype=torch.long, device=device)  # [1, 2]
    was_training = forward.training
    forward.eval()
    with torch.no_grad():
        forward(ids, torch.ones_like(ids), torch.ones(1, 1, device=device), prompt_len=1)
    forward.reshard()  # the root keeps its parameters gathered after a forward; the optimizer needs the shards
    forward.train(was_training)
    return forward


def fsdp_modules(module: torch.nn.Module) -> list[Any]:
    """The FSDP2 units inside `module` (empty when it is not sharded)."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


@contextmanager
def full_parameters(module: torch.nn.Module) -> Iterator[None]:
    """Every FSDP2 unit of `module` gathered (and kept gathered across forwards) inside the block.

    Generation, no-grad statistics, evaluation and checkpoint reads call the policy's submodules
    directly, outside the root's forward; this makes their parameters whole for the block. A no-op for
    a module that is not sharded.
    """
    units = fsdp_modules(module)
    for m in units:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


@contextmanager
def no_gradient_sync(module: torch.nn.Module) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter of the backward passes inside the block (gradient
    accumulation): DDP's `no_sync`, FSDP2's `set_requires_gradient_sync(False)`, else nothing."""
    if fsdp_modules(module):
        module.set_requires_gradient_sync(False)  # the root, recursively
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
        return
    ctx = module.no_sync() if hasattr(module, "no_sync") else None
    if ctx is None:
        yield
        return
    with ctx:
        yield


def full_value(x: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (FSDP2 gradient norms), else `x`."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x
