"""The explorer: a web page over a run folder, the pipeline as blocks and each block's own artifacts."""

from tokenmill.explorer.app import explorer_app, mount_explorer

__all__ = ["explorer_app", "mount_explorer"]
