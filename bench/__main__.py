import sys

if sys.argv[1:2] == ["compiled"]:  # pure against compiled (mypyc): bench/compiled.py
    from bench.compiled import main as compiled

    sys.exit(compiled(sys.argv[2:]))

from bench.cli import main  # noqa: E402

sys.exit(main())
