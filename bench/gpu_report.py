"""bench/gpu.sh's last step: its speed tables against issue 23's goals, and the decision-table
rows (pipeline/training/kernels/decisions.yaml) its measurements support.

    python3 bench/gpu_report.py     # reads $OUT/train-speed-speed-8b.json and -speed-1b.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(out: Path, label: str) -> dict[str, dict]:
    path = out / f"train-speed-{label}.json"
    if not path.is_file():
        return {}
    return {r["config"]: r for r in json.loads(path.read_text())["results"] if "error" not in r}


def ratio(runs: dict, a: str, b: str, key: str = "tokens_per_s") -> float | None:
    if a in runs and b in runs and runs[a].get(key) and runs[b].get(key):
        return runs[a][key] / runs[b][key]
    return None


def goal(line: str, value: float | None, target: float, at_least: bool = True) -> bool:
    if value is None:
        print(f"  {line}: not measured")
        return False
    met = value >= target if at_least else value <= target
    print(f"  {line}: {value:.2f} (goal {'>=' if at_least else '<='} {target}) {'MET' if met else 'NOT MET'}")
    return met


def main() -> int:
    out = Path(os.environ.get("OUT") or ROOT / "bench-out")
    big, small = load(out, "speed-8b"), load(out, "speed-1b")
    weights_gib = 16.06e9 / 2**30  # Llama-3.1-8B in bf16; peak memory above it is the activations
    print("issue 23 goals, H200, through `countrytune train`:")
    results = [
        goal("8B ours / off tokens/s", ratio(big, "ours", "off"), 1.5),
        goal("8B ours / liger tokens/s", ratio(big, "ours", "liger"), 1.25),
        goal("8B ours MFU", big.get("ours", {}).get("mfu"), 0.48),
        goal("1B ours / off tokens/s", ratio(small, "ours", "off"), 1.3),
        goal("8B defaults / off tokens/s", ratio(big, "defaults", "off"), 1.0),
        goal("1B defaults / off tokens/s", ratio(small, "defaults", "off"), 1.0),
    ]
    for name in ("ours", "ours-lean"):
        peak, off = big.get(name, {}).get("peak_mem_gib"), big.get("off", {}).get("peak_mem_gib")
        if peak and off:
            results.append(goal(f"8B {name} / off peak memory", peak / off, 0.6, at_least=False))
            goal(f"8B {name} / off peak memory above the weights ({weights_gib:.1f} GiB)",
                 (peak - weights_gib) / (off - weights_gib), 0.6, at_least=False)
    print("  (the losses of every configuration against off's: see the tables above; a run that "
          "left the curve failed the benchmark)")

    if small.get("defaults"):
        print("\nrows for pipeline/training/kernels/decisions.yaml (1B shape, each kernel alone against "
              "the defaults, tokens/s ratio):")
        base = small["defaults"]["tokens_per_s"]
        speeds = {}
        for config, kernel, impl in (("lora-torch", "lora", "torch"), ("lora-triton", "lora", "triton"),
                                     ("flce", "fused_linear_cross_entropy", "triton")):
            if config in small:
                speeds.setdefault(kernel, {})[impl] = round(small[config]["tokens_per_s"] / base, 2)
        if "liger-3" in small:
            for kernel in ("rms_norm", "rope", "swiglu"):
                speeds[kernel] = {"triton": round(small["liger-3"]["tokens_per_s"] / base, 2)}
        print("  kernels:")
        for kernel, measured in speeds.items():
            shown = ", ".join(f"{impl}: {value}" for impl, value in measured.items())
            print(f"    {kernel}: {{{shown}}}")
    return 0 if results and all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
