"""The executor: the operators' rollback runbook, carried out on a service manager.

``units`` is the seam (the ``Units`` protocol, its factory; ``systemd.Unreachable`` the no-op),
``systemd`` the D-Bus adapter, ``verify`` checks the service from outside as the runbook's
verification list does (the profile's questions and ``/proc``), ``after`` watches the fallback
after a rollback, and ``runbook`` runs the steps, journaling each before and after, so a crash
at any moment can be reconciled against the real unit states.
"""
