"""The application layer: settings, connections, catalog sources, the build session, the checks.

Imports sharding/ and modal_workers/ below it; never Prefect tasks or flows, never the CLI.
"""
