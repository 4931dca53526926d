"""Reconcile logic: observe, build desired children, apply, compute status."""
