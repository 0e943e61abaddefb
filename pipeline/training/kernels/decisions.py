"""The decision table behind `kernels.implementation: auto` (decisions.yaml beside this file).

A kernel runs fused under `auto` only on a device class where it was measured faster than its
reference through `countrytune train`; everywhere else it runs the reference, and the reason
says whether it measured slower or was never measured there. The table is data with its
numbers; a row whose choice its numbers do not back cannot be written, because the choice is
computed from the numbers here, never stated.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

from countrytune.artifacts.recipe_kernels import IMPLEMENTATIONS

TABLE = Path(__file__).with_name("decisions.yaml")
# A kernel is taken only when it measured this much faster than its reference: three runs of one
# configuration on these CPUs gave 178, 180 and 182 tokens/s (bench/recipes/speed-cpu.yaml), a
# 2% spread, so 1.03 is not a win.
MARGIN = 1.05


@dataclass(frozen=True)
class DeviceClass:
    type: str
    """cuda or cpu."""
    name: str
    """What the device calls itself (torch.cuda.get_device_name(), or "cpu")."""

    def __str__(self) -> str:
        return self.name if self.type == "cuda" else self.type


@dataclass(frozen=True)
class Row:
    device_type: str
    name_contains: str | None
    source: str
    speeds: dict[str, dict[str, float]]
    """kernel -> implementation -> tokens/s relative to the kernel's reference."""

    def matches(self, device: DeviceClass) -> bool:
        return device.type == self.device_type and (
            self.name_contains is None or self.name_contains in device.name)


def device_class(device_type: str, name: str | None = None) -> DeviceClass:
    """The class of the device a model trains on: the GPU's name on CUDA (asked of torch when
    not given), "cpu" otherwise."""
    if device_type != "cuda":
        return DeviceClass(device_type, device_type)
    if name is None:
        import torch

        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "unknown CUDA device"
    return DeviceClass("cuda", name)


def read_table(path: Path = TABLE) -> list[Row]:
    rows = []
    for i, entry in enumerate(yaml.safe_load(path.read_text(encoding="utf-8")) or []):
        where = f"{path.name} row {i + 1}"
        device = entry.get("device") or {}
        if device.get("type") not in ("cuda", "cpu") or not entry.get("source"):
            raise ValueError(f"{where}: needs device.type (cuda or cpu) and a source")
        speeds = entry.get("kernels") or {}
        for kernel, measured in speeds.items():
            if kernel not in IMPLEMENTATIONS:
                raise ValueError(f"{where}: unknown kernel {kernel!r}")
            for impl, speed in measured.items():
                if impl not in IMPLEMENTATIONS[kernel] or impl == "reference":
                    raise ValueError(f"{where}: {kernel} has no implementation {impl!r} to measure")
                if not isinstance(speed, (int, float)) or speed < 0:
                    raise ValueError(f"{where}: {kernel}.{impl} needs a measured speed ratio, got {speed!r}")
        rows.append(Row(device["type"], device.get("name_contains"), entry["source"],
                        {k: {i: float(s) for i, s in v.items()} for k, v in speeds.items()}))
    return rows


@functools.lru_cache(maxsize=1)
def _table() -> tuple[Row, ...]:
    return tuple(read_table())


def auto_choice(kernel: str, device: DeviceClass, rows=None) -> tuple[str, str]:
    """(implementation, why) for `kernel` under implementation auto on `device`: the fastest
    implementation measured at least MARGIN times the reference's speed on the first matching
    row, else the reference with the reason."""
    rows = _table() if rows is None else rows
    row = next((r for r in rows if r.matches(device)), None)
    if row is None:
        return "reference", (f"not measured on {device} (bench/gpu.sh measures it; "
                             f"pipeline/training/kernels/decisions.yaml holds the measured device classes)")
    measured = row.speeds.get(kernel, {})
    if not measured:
        return "reference", f"not measured on {device} (pipeline/training/kernels/decisions.yaml)"
    impl, speed = max(measured.items(), key=lambda kv: kv[1])
    if speed < MARGIN:
        shown = ", ".join(f"{i} {s:.2f}x" for i, s in sorted(measured.items()))
        return "reference", f"not measured faster than the reference on {device} ({shown})"
    return impl, f"measured {speed:.2f}x the reference on {device}"
