"""The runtime on top: replay, simulator, evaluation, bag I/O, sample bags, CLI."""
