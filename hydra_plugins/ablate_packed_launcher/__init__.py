"""ablate's packed launcher, where Hydra looks for launchers (the ``hydra_plugins`` namespace package)."""
