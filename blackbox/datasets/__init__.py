"""Generators of blackbox's own test and example data (the shapes data set). Nothing at run time
imports this package: it serves the example-model build script, the tests and the benchmarks."""
