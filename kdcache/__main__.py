"""``python -m kdcache`` runs the command line."""

from kdcache.cli.main import main

main()
