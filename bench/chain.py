"""What the real-model benchmarks share: running `countrytune` steps as users do, each logged,
a fresh work folder, and the closing wall-time list and JSON record."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [str(Path(sys.executable).parent / "countrytune")]


def sh(cmd: list[str], log: Path) -> float:
    """Run a countrytune command, its output to `log`; returns wall seconds."""
    print("$ " + " ".join(cmd), flush=True)
    started = time.monotonic()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}); see {log}:\n" + "".join(log.read_text().splitlines(True)[-20:]))
    return time.monotonic() - started


def work_folder(path: Path, keep: bool) -> Path:
    """`path` resolved, emptied unless `keep` (reuse imported models and prep outputs), with logs/."""
    work = path.resolve()
    if work.exists() and not keep:
        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    return work


def finish(work: Path, name: str, walls: dict[str, float], ok: bool, record: dict) -> bool:
    """Print the wall times and the verdict; write WORK/<name>.json."""
    print()
    for step, wall in walls.items():
        print(f"- {step}: {wall / 60:.1f} min")
    total = sum(walls.values())
    print(f"- total: {total / 60:.1f} min")
    (work / f"{name}.json").write_text(json.dumps({"walls_s": walls, "total_s": total, "goal_met": ok, **record},
                                                  indent=2))
    print(f"goal {'MET' if ok else 'NOT met'}")
    return ok
