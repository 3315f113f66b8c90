"""Measuring a frozen or fine-tuned encoder: features, kNN, linear probe, fine-tuning,
the label-efficiency study and the representation diagnostics."""
