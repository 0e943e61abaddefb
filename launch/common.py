"""What every launcher shares: the recipe's identity, the config files, the launch command."""

from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from countrytune.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
ACCELERATE_DIR = PACKAGE_DIR / "accelerate"
DEEPSPEED_DIR = PACKAGE_DIR / "deepspeed"
# The checkout holding pipeline/ and recipes/: launchers cd here (the DeepSpeed YAMLs name
# their JSON relative to it). An installed copy falls back to the current directory.
REPO_ROOT = PACKAGE_DIR.parent if (PACKAGE_DIR.parent / "pipeline").is_dir() else Path.cwd()
TRAIN_MODULE = "pipeline.train"


@dataclass(frozen=True)
class RecipeFile:
    """A recipe file as a launcher refers to it (where it is, what it is called, its resolved
    text), checked by the trainer's own loader, countrytune.artifacts.recipe.load_recipe."""

    path: Path
    name: str
    country: str
    text: str
    """The resolved recipe as one self-contained YAML (`extends` merged, overrides applied):
    what a Kubernetes ConfigMap carries."""

    @property
    def run_name(self) -> str:
        """`<country>-<name>`: the default run folder under runs/ and the job name."""
        return f"{self.country}-{self.name}"


def parse_sets(sets: list[str] | None) -> list[str]:
    """Check `--set key=value` overrides; they are passed to the trainer unchanged."""
    out = []
    for item in sets or []:
        key, eq, _ = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value (e.g. --set training.max_steps=100)")
        out.append(item)
    return out


def resolve_recipe_file(path: str | Path, sets: list[str] | None = None) -> RecipeFile:
    """Read and validate RECIPE with the trainer's own loader (`extends`, `--set`), so a typo
    fails on the laptop rather than after hours in a queue. It needs only the base install
    (pydantic, PyYAML), not the training stack, so login nodes can run it."""
    from countrytune.artifacts.recipe import load_recipe as full_load
    from countrytune.artifacts.recipe import recipe_to_yaml

    path = Path(path).expanduser().resolve()
    sets = parse_sets(sets)
    if not path.is_file():
        raise UserError(f"{path}: no such recipe file")
    recipe = full_load(path, sets)
    return RecipeFile(path=path, name=recipe.name, country=recipe.country, text=recipe_to_yaml(recipe))


def accelerate_config(value: str | None, default: str) -> Path:
    """A config under launch/accelerate/ by name (`zero2`, `zero2.yaml`) or any YAML path."""
    value = value or default
    for candidate in (ACCELERATE_DIR / value, ACCELERATE_DIR / f"{value}.yaml", Path(value)):
        if candidate.is_file():
            return candidate.resolve()
    names = ", ".join(sorted(p.stem for p in ACCELERATE_DIR.glob("*.yaml")))
    raise UserError(f"accelerate config {value!r} not found; choose one of {names} or give a path")


def distributed_type(config: Path) -> str:
    """The config's distributed_type (NO, MULTI_GPU, DEEPSPEED, FSDP...)."""
    data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    return str(data.get("distributed_type", "NO"))


def launch_command(*, python: str, config: Path, num_processes: int, num_machines: int = 1,
                   machine_rank: str = "0", main_ip: str | None = None, main_port: str | None = None,
                   cpu: bool = False) -> list[str]:
    """`accelerate launch` with every value explicit, so a stray default config cannot leak in.

    On CPU, `--multi_gpu` (with ACCELERATE_USE_CPU=1 in the environment) is what starts
    several gloo processes; `--cpu` would silently start one. It is left out for one
    process (accelerate refuses it) and for DeepSpeed/FSDP configs (they pick the launcher).
    """
    cmd = [python, "-m", "accelerate.commands.launch", "--config_file", str(config),
           "--num_processes", str(num_processes), "--num_machines", str(num_machines)]
    if cpu and num_processes > 1 and distributed_type(config) in ("NO", "MULTI_GPU"):
        cmd.append("--multi_gpu")
    if num_machines > 1 or main_ip:
        cmd += ["--machine_rank", machine_rank, "--main_process_ip", main_ip or "127.0.0.1",
                "--main_process_port", main_port or "29500", "--rdzv_backend", "static"]
    return cmd


def train_args(recipe: str, output: str, sets: list[str], module: str = TRAIN_MODULE) -> list[str]:
    """The trainer's own arguments, after `accelerate launch ...`."""
    args = ["-m", module, recipe, "--output", output]
    for item in sets:
        args += ["--set", item]
    return args


def shell_join(args: list[str], wrap: str | None = None) -> str:
    """Quote for bash, leaving "$VAR" references (rendezvous values) expandable.

    With `wrap` (an indent), each option starts a continued line: readable in a script.
    """
    words = [a if re.fullmatch(r'"\$[A-Z_][A-Z0-9_]*"', a) else shlex.quote(a) for a in args]
    if wrap is None:
        return " ".join(words)
    out = words[0]
    for prev, word in itertools.pairwise(words):
        starts_option = word.startswith("-") and not prev.startswith("--set")
        out += f" \\\n{wrap}{word}" if starts_option else f" {word}"
    return out


def dns_name(text: str, limit: int = 40) -> str:
    """A Kubernetes/Slurm-safe name: lowercase letters, digits and dashes.

    40 characters leaves room for the operator's `-worker-NN` suffixes within the
    63-character label limit.
    """
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return name or "countrytune"
