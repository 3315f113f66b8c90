"""Training: the step loop (``engine``), the checkpoint format (``checkpoint``),
optimizers (``optim``), the collapse monitor (``monitor``) and what keeps a run folder
whole (``safety``: one writer, stops between steps, no non-finite checkpoint)."""
