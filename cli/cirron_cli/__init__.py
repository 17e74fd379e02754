"""The ``cirron`` command line: argument parsing and rendering over ``cirron.spool`` and ``cirron.export``."""
