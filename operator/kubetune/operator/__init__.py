"""The kubetune operator: kopf handlers (`handlers.py`) over pure builders (`builders/`) and
reconcile functions (`reconcile/`)."""
