"""`python -m tandem.agent` runs the `tandem` command line."""

from tandem.agent.cli.main import main

main()
