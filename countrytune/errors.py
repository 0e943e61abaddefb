"""Errors a user can fix, and the exit-code contract every command follows.

Exit codes: 0 done; 2 a problem the user can fix (the message says how, without a traceback);
1 a bug (traceback printed); 130 interrupted.
"""

from __future__ import annotations

import errno
import sys


class UserError(Exception):
    """Bad input or configuration. The message says what is wrong and how to fix it."""


def run_command(run, args) -> int:
    """Run a subcommand under the exit-code contract (the CLI and `python -m` entry points).

    Every entry point passes here, so this is also where the process forbids transformers' Hub
    kernels (countrytune/hf_models.py says why) and keeps libraries' output off the terminal
    unless --verbose (countrytune/library_output.py)."""
    from countrytune import library_output
    from countrytune.hf_models import forbid_hub_kernels

    forbid_hub_kernels()
    library_output.quiet(getattr(args, "verbose", False))
    try:
        return run(args) or 0
    except UserError as e:
        print(f"countrytune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"countrytune {args.command}: interrupted; rerun the same command to resume",
              file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in MACHINE_PROBLEMS:
            raise  # anything else is ours to fix: a traceback
        where = f": {e.filename}" if e.filename else ""
        print(f"countrytune {args.command}: error: {e.strerror}{where}", file=sys.stderr)
        return 2


# What the machine says about a path or the disk, never a bug in countrytune: the user fixes it
# (a shorter name, free space, permissions), so it is one line, exit 2, no traceback.
MACHINE_PROBLEMS = {errno.ENAMETOOLONG, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM,
                    errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EMFILE, errno.ELOOP}
