"""The command line, the face of tap-edge: one module per command (options, one library call, printing).

Every command module registers itself on :data:`tap_edge.cli.app.app` when imported; this list is the one place
they are imported. Nothing else in tap_edge imports the CLI."""

from tap_edge.cli import app as _app
from tap_edge.cli import compile, evolve, plan, report  # noqa: F401 - registers the commands

main = _app.main
