"""Generators of blackbox's own test and example data: the shapes data set, and a concept set for
dissecting the shapes models. The explanation and visualisation code never imports this package; the
example-model build script, ``blackbox concepts``, the tests and the benchmarks do."""
