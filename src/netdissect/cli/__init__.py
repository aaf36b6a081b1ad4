"""The command line (commands) and its shared options (options)."""
from netdissect.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
