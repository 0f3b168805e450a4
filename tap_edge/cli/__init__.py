"""The command line, the face of tap-edge: one module per command (options, one library call, printing).

Every command module registers itself on :data:`tap_edge.cli.app.app` when imported; this list is the one place
they are imported, in the order ``tap-edge --help`` shows them. Nothing else in tap_edge imports the CLI."""

from tap_edge.cli import app as _app
from tap_edge.cli import (  # noqa: F401 - each import registers its command
    backends,
    check,
    compile,
    devices,
    eval,
    evolve,
    measure,
    models,
    plan,
    proxies,
    report,
)

main = _app.main
