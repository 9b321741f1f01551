#!/bin/sh
# The venv's own `qiime`: Debian's q2cli run by the venv's Python (so it sees
# q2-aam and the pip-installed torch), with a plugin cache of its own.
export XDG_CONFIG_HOME="@VENV@/qiime-config"
exec "@VENV@/bin/python" -c "import sys; from q2cli.__main__ import qiime; sys.argv[0] = 'qiime'; sys.exit(qiime())" "$@"
