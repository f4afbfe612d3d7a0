"""Running a matrix: configuration, expansion, one cell, executors, the run store, locks."""
