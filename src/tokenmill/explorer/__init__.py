"""The explorer: a web page over a run folder, the pipeline as blocks and each block's own artifacts.

The app is in `tokenmill.explorer.app` (`explorer_app`, `mount_explorer`); importing the package
imports nothing else, so that the CLI starts without the model code.
"""
