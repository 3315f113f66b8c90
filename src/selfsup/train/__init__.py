"""Training: the step loop (``engine``), the checkpoint format (``checkpoint``),
optimizers (``optim``) and the collapse monitor (``monitor``)."""
