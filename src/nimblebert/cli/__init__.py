"""The ``nimblebert`` command: one file per subcommand."""
