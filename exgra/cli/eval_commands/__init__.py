"""Subcommands of ``exgra eval``; see :mod:`exgra.cli.eval`."""
