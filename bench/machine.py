"""What machine a benchmark ran on, for its table and JSON (shared by the scripts in bench/)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: str) -> str:
    """One line: the GPU for CUDA devices, else the CPU with its logical CPUs and torch threads; torch version."""
    if str(device).startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    threads = torch.get_num_threads()
    return f"{cpu_model()} ({os.cpu_count()} logical CPUs), {threads} torch threads, torch {torch.__version__}"
