"""The command-line framework every CLI uses: exception types and exit statuses (errors),
the argument parser (args) and the entry-point runner (run)."""
