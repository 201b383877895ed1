"""The test suite is one package, so no test folder name (kernels, engine, ...) can shadow an
installed package of that name on sys.path."""

# LLVM's optimisation passes are most of XLA's CPU compile time, and the tests compile far more
# than they run: the suite and the processes its tests launch (servers, multi-host training)
# compile at level 0 (the same float semantics; no speed is measured by a test).
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"
