"""The test suite is one package, so no test folder name (kernels, engine, ...) can shadow an
installed package of that name on sys.path."""
