"""Training: typed YAML configs, the two-phase PCSR recipe, checkpoints that resume exactly, DDP.

Nothing here is imported by inference code; `pcsr train` and `pcsr export` live in `pcsr.cli.train`.
"""
