"""The llmgw command line: runner, embedded infrastructure, starter config, benchmark."""
