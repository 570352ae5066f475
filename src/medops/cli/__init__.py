"""The `medops` command line."""
