"""What each notebook runs: one function per stage (``run(config, ...) -> result``)."""
