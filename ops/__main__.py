"""`python -m ops` is the `tiergate` command."""

from .cli import main

main()
