"""Co-running benchmark (issue 12): load generator (`load`), request payloads (`payloads`), in-process
baseline (`inprocess`), orchestration (`run`) and report (`report`); the CLI is `python -m bench.corun`."""
