"""Where a run reports: metrics.jsonl (one JSON object per event) and TensorBoard scalars.

Only the main process writes; on other ranks every call is a no-op. Appends, so a resumed
run continues the same files.
"""

import json
import os
import resource

import torch


class RunLog:
    def __init__(self, dump_path: str, enabled: bool):
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(dump_path, "log", "train"))
            self.metrics = open(os.path.join(dump_path, "metrics.jsonl"), "a")

    def write(self, record: dict, group: str) -> None:
        """Append `record` to metrics.jsonl and plot its numbers under `group/` at its step."""
        if not self.enabled:
            return
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{group}/{key}", value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.metrics.close()
            self.writer.close()


def memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
