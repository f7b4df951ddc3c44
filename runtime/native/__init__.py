"""The native C++ runtime for `.castml` files: sources (src/), CMake build (`build.py`).

Built on demand with `python -m runtime.native.build`; loaded from Python by
`runtime.native_backend` (ctypes, no compiled extension) and usable with no Python at all
through its C API (src/castml.h) and the `castml-run` executable.
"""
