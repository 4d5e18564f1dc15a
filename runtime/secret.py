"""Where the shared token comes from, for both `runtime.cloud` and `runtime.edge`.

    token = resolve_token(args.token, args.token_file)    # None: no token

In order: `--token T` (visible in `ps`; kept for scripts), `--token-file F` (the first line of F,
surrounding whitespace stripped), then the environment variable `COINFER_TOKEN`. Giving both
`--token` and `--token-file` is an error; an empty token or an unreadable file (not a regular file, over
64 KiB: `cli.files.read_text`) is one CoInferError line. The token's value is never printed or logged
(errors name the file, not its content).
"""

from __future__ import annotations

import os

from cli.errors import CoInferError
from cli.files import read_text

ENV_TOKEN = "COINFER_TOKEN"
MAX_TOKEN_FILE_BYTES = 64 * 2**10  # a token is a line; a FIFO, a folder or a larger file is refused unread


def resolve_token(token: str | None = None, token_file: str | None = None,
                  environ: dict[str, str] | None = None) -> str | None:
    """The token from the flag, else the file, else $COINFER_TOKEN (see the module doc); None when none."""
    if token is not None and token_file is not None:
        raise CoInferError("give --token or --token-file, not both")
    if token_file is not None:
        lines = read_text(token_file, "--token-file", MAX_TOKEN_FILE_BYTES).splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise CoInferError(f"--token-file {token_file} is empty")
        return token
    if token is None:
        token = (os.environ if environ is None else environ).get(ENV_TOKEN)
        if token is not None and not token.strip():
            raise CoInferError(f"${ENV_TOKEN} is set but empty")
        return token.strip() if token is not None else None
    if not token:
        raise CoInferError("--token must not be empty")
    return token
