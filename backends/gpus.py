"""GPU-free detection from nvidia-smi, shared by every backend that reads it.

A reading nvidia-smi cannot give (`[N/A]`, garbage, a missing binary) makes that GPU not free;
it never raises and never stops the other GPUs from being used (ARIS §3.5 raised and stalled).
"""
from __future__ import annotations

from dataclasses import dataclass

QUERY_ARGS = ("--query-gpu=index,uuid,memory.used,memory.total", "--format=csv,noheader,nounits")


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    used_mib: int | None  # None when nvidia-smi could not say
    total_mib: int | None


def _int_or_none(text: str) -> int | None:
    try:
        return int(float(text.strip()))
    except ValueError:
        return None


def parse_gpu_csv(text: str) -> list[Gpu]:
    gpus: list[Gpu] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        index = _int_or_none(parts[0])
        if index is None:
            continue
        gpus.append(Gpu(index, parts[1], _int_or_none(parts[2]), _int_or_none(parts[3])))
    return gpus


def free_gpus(gpus: list[Gpu], threshold_mib: int, allowed: list[int] | None = None) -> list[int]:
    """Indices whose used memory is known and strictly below the threshold."""
    return [
        g.index for g in gpus
        if g.used_mib is not None and g.used_mib < threshold_mib
        and (allowed is None or g.index in allowed)
    ]
