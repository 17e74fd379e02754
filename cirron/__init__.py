from cirron._version import __version__
