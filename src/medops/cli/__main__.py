"""`python -m medops.cli`."""

from medops.cli.main import main

main()
