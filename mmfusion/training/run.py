"""Multi-process training: `torchrun --nproc_per_node N -m mmfusion.training.run MODEL --method ... --train ...`."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mmfusion.repository.versions import state_for_saving
from mmfusion.training.engine import pick_device
from mmfusion.training.finetune import finetune
from mmfusion.training.options import add_train_arguments, options_from_args

RANKS_DIR = "ranks"


def weights_sha256(module: torch.nn.Module) -> str:
    """One hash over every tensor of a module's state (names in order): equal on ranks that agree."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state_for_saving(module).items()):
        digest.update(name.encode())
        digest.update(tensor.float().numpy().tobytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Join the process group torchrun set up (gloo on CPU, nccl on GPU), train, and record each rank's weights."""
    parser = argparse.ArgumentParser(prog="mmfusion.training.run", description=__doc__)
    add_train_arguments(parser)
    model, options = options_from_args(parser.parse_args(argv))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(options.device)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        options.device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        options.progress = options.progress and rank == 0
        result = finetune(model, options, say=print if rank == 0 else lambda *_: None)
        folder = Path(options.out) / RANKS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        record = {"rank": rank, "world_size": world, "steps": result.history.epochs[-1]["steps"]}
        record["weights_sha256"] = weights_sha256(result.graph)
        (folder / f"rank{rank}.json").write_text(json.dumps(record, indent=2))
        if rank == 0:
            print(f"wrote version {result.version} at {result.folder} ({world} processes)")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
