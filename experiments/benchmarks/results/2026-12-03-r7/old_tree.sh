#!/usr/bin/env bash
# Builds /tmp/old: this checkout with scoresde/models/group_norm.py as of commit 9b26938 (GroupNorm
# "auto" through lax.platform_dependent, kernel wrappers not jitted), for same-host A/B runs.
# The old file travels as .old/group_norm_9b26938.py (ignored; carried), made here with
#   mkdir -p .old && git show 9b26938:scoresde/models/group_norm.py > .old/group_norm_9b26938.py
# Today's suite.py imports default_backend_is_cuda from the module, so the copy gets that
# function appended (the old module itself never calls it).
set -euo pipefail
rm -rf /tmp/old && mkdir -p /tmp/old
cp -r scoresde experiments /tmp/old/
cp .old/group_norm_9b26938.py /tmp/old/scoresde/models/group_norm.py
cat >> /tmp/old/scoresde/models/group_norm.py <<'PY'


def default_backend_is_cuda() -> bool:  # appended for the A/B (see old_tree.sh)
    import jax.extend

    if jax.default_backend() != "gpu":
        return False
    return "cuda" in jax.extend.backend.get_backend().platform_version.lower()
PY
