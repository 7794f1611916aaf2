"""The function runtime: loads a handler and calls it with events, Lambda style.

``invoke.load_handler`` and ``invoke.invoke`` hold the logic; ``python3 -m nexus_runtime`` runs
one event from a file or stdin.
"""
