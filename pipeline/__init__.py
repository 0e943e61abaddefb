"""pipeline: training (recipes, data, the loop, checkpoints, kernels), base-model import,
held-out evaluation and export. ARCHITECTURE.md maps the files."""
