"""syncbn's Python client: the coordinator's wire (syncbn.wire) and the PyTorch
layer on top of it (syncbn.torch). Started by `syncbn launch`, which sets the
environment init_process_group() reads. Not a launcher, not a coordinator."""

__version__ = "0.1.0"
