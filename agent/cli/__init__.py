"""The `tandem` command line and the REPL: a thin front end over the turn layer."""
