"""Training job: configuration, loss and the (DistributedDataParallel-ready) training loop."""
