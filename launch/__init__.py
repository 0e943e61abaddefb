"""`countrytune launch`: run one training recipe on a laptop, a Slurm cluster or Kubernetes.

Every target runs the same command, `accelerate launch [config and rendezvous] -m
pipeline.train RECIPE --output RUN_DIR`; only who supplies the rendezvous values differs
(the flags here, Slurm's environment, the Kubeflow operator's environment). The trainer
resumes from the newest complete checkpoint in RUN_DIR, so rerunning the same command
after a preemption or a pod restart continues the run.
"""
