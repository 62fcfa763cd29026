"""The compiled part of the package: the pipelined connections' DataRow decoder
(router/backend/_rowdecode.c; router/backend/pgrows.py is the same in Python). Everything else
is in pyproject.toml.

Optional: where it cannot be built (no C compiler or no Python headers) the install goes on
with a warning, and the Python decoder is used. tests/unit/test_pgrows.py fails under CI
when that happens, so CI never tests only the fallback."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "router.backend._rowdecode",
            sources=["router/backend/_rowdecode.c"],
            extra_compile_args=["-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            optional=True,
        )
    ],
)
