"""`python -m tandem.agent` runs the `tandem` command line."""

from tandem.agent.cli import main

main()
