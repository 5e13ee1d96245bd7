"""Build of edge-irst: everything is declared in setup.cfg except the optional C labeller built here.

edge_irst.postprocess._labeller is plain C99 (gcc or clang; also aarch64 Termux / Raspberry Pi OS), needs no
numpy headers, and is optional: when it cannot be compiled the package still installs, prints one warning, and
edge_irst.postprocess falls back to its OpenCV implementation (same results, slower).

Environment variables read at build time:
  EDGE_IRST_REQUIRE_EXT=1   a failed compile is an error instead of a warning (CI sets it).
  EDGE_IRST_NO_EXT=1        do not try to compile the extension at all (OpenCV fallback only).
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

POSTPROCESS = "edge_irst/postprocess"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class OptionalBuildExt(build_ext):
    """build_ext that turns a compile failure into a warning unless EDGE_IRST_REQUIRE_EXT is set."""

    def build_extensions(self):
        if self.compiler.compiler_type != "msvc":
            # -std=c99 also turns off floating-point contraction in gcc (GNU modes contract a*b+c into an FMA on
            # aarch64); -ffp-contract=off says it explicitly for clang. Without FMA the C sums are bit-identical
            # to the numpy ones of the OpenCV fallback, which the tests require.
            # -pthread: the labeller scans row bands on threads of its own.
            for ext in self.extensions:
                ext.extra_compile_args = ["-std=c99", "-O3", "-ffp-contract=off", "-pthread", *ext.extra_compile_args]
                ext.extra_link_args = ["-pthread", *ext.extra_link_args]
        super().build_extensions()

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler at all surfaces here (DistutilsPlatformError and friends)
            self._give_up(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # CompileError, LinkError, a missing Python.h, ...
            self._give_up(exc)

    @staticmethod
    def _give_up(exc: Exception):
        if _flag("EDGE_IRST_REQUIRE_EXT"):
            raise RuntimeError(f"the C labeller edge_irst.postprocess._labeller failed to build ({exc}); "
                               "EDGE_IRST_REQUIRE_EXT=1 makes this an error: install a C compiler and the Python "
                               "headers (e.g. apt install gcc python3-dev), or unset EDGE_IRST_REQUIRE_EXT "
                               "to install with the OpenCV fallback") from exc
        print(f"WARNING: edge-irst: the C labeller was not built ({type(exc).__name__}: {exc}); "
              "edge_irst.postprocess will use the slower OpenCV fallback", file=sys.stderr)


extensions = [] if _flag("EDGE_IRST_NO_EXT") else [
    Extension(
        "edge_irst.postprocess._labeller",
        sources=[f"{POSTPROCESS}/_labeller.c", f"{POSTPROCESS}/labeller_core.c"],
        depends=[f"{POSTPROCESS}/labeller_core.h"],
        include_dirs=[POSTPROCESS],
    )
]

setup(ext_modules=extensions, cmdclass={"build_ext": OptionalBuildExt})
