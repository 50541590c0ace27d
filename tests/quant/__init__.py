"""INT8 / FP8 / mixed-precision tests: a package, so its conftest does not shadow the plain-name
``from conftest import ...`` of other test folders."""
