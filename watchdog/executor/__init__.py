"""The executor: the operators' rollback runbook, carried out over systemd's D-Bus API.

``systemd`` is the D-Bus adapter, ``verify`` checks the service from outside as the runbook's
verification list does, and ``runbook`` runs the steps, journaling each before and after, so a
crash at any moment can be reconciled against the real unit states.
"""
