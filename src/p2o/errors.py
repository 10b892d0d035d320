"""Errors about what a user gave: a config value, a data row, a plug-in name.

This module imports nothing from p2o, so every layer can raise these. A `UserError`'s message names
the field, file, row or name at fault and what to do; `p2o.cliutil.report_errors` prints it as
`prog: <prefix><message>` and exits with status 2 (no traceback: nothing in the code is wrong).
"""

from __future__ import annotations


class UserError(Exception):
    """Base of the errors a command reports as a mistake in its input rather than a bug."""

    prefix = ""  # what `report_errors` puts before the message


class ConfigError(UserError, ValueError):
    """An invalid configuration value. The message names the field and what is allowed."""

    prefix = "invalid config: "


class DataError(UserError, ValueError):
    """A dataset problem; the message names the source, row and field, and what to do."""

    prefix = "data error: "


class RegistryError(UserError, ValueError):
    """A task, verifier or reflection model that cannot be found: an unknown name, or a dotted path
    whose module or attribute does not exist. The message names it and what is known."""


# Printed by `p2o.train.trainer.release_process_group` when a destroyed process group is still
# referenced; `p2o rehearse` fails a multi-process stage whose log holds it.
GROUP_STILL_HELD = "the process group is still referenced after it was destroyed"
