"""``python -m kdcache`` runs the command line."""

from cli.main import main

main()
