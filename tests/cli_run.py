"""``fractal-flood ARGV`` run in the test's own process, for the CLI tests."""

from fractal_flood.cli.main import main


def run_main(argv, capsys):
    """-> (exit code, stdout, stderr); argv items may be paths or numbers."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err
