"""Process-group helpers of the trainer, on top of `accelerate`.

With one process every helper is the identity. With several (`accelerate launch`), each process
holds its own rows of the step's batch; whole-batch quantities (advantages, controls, metrics) are
computed on rows gathered from every process, and each process then keeps its own slice.
Gradients are synchronised by DDP (see `sum_gradients_hook`), not here.
"""

# No `from __future__ import annotations`: DDP checks the communication hook's annotations as objects.
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
