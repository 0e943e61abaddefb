"""Export a finished training run as a verifiable adapter package, push it to a registry
(local directory or OCI), and pull it back verified. See `countrytune export --help`.

    export_run(run_dir, registry_uri, version, name=None, ...) -> "id/cpt-lora:1.0"
    pull(ref, registry_uri, to) -> Path
    vllm_serve_command(package_dir) -> "vllm serve ... --enable-lora ..."
"""

from pipeline.export.model_card import vllm_serve_command
from pipeline.export.package import export_run
from pipeline.registry.pull import pull

__all__ = ["export_run", "pull", "vllm_serve_command"]
