"""`python -m agent` runs the `tandem` command line."""

from agent.cli import main

main()
