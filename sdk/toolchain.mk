# The component toolchains the SDK's build scripts use, pinned once: the Makefile includes this
# file, and `weir component build` reads it (built into the binary) to install them for a
# project outside the repository.
COMPONENTIZE_JS_VERSION := 0.23.0
COMPONENTIZE_PY_VERSION := 0.25.1
