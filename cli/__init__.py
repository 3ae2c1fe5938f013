"""The ``kdcache`` command line: a thin click front end over the library."""
