"""`python -m tandem.agent` runs the `tandem` command line."""

from tandem.agent.cli.entry import main

main()
