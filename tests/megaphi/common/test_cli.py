import pytest

from megaphi.common.cli import entry_point
from megaphi.common.errors import InputNotFoundError, UserError


@entry_point
def main(argv=None) -> int:
    kind = argv[0]
    if kind == "user":
        raise UserError("--flag must be positive, got -1")
    if kind == "missing":
        raise InputNotFoundError("input 'x/*.jsonl' matches no files")
    if kind == "bug":
        raise KeyError("a bug")
    return 0


def test_a_user_error_is_one_error_line_and_exit_2(capsys):
    assert main(["user"]) == 2
    assert capsys.readouterr().err == "error: --flag must be positive, got -1\n"
    assert main(["missing"]) == 2
    assert capsys.readouterr().err == "error: input 'x/*.jsonl' matches no files\n"


def test_anything_else_is_a_bug_and_keeps_its_traceback(capsys):
    with pytest.raises(KeyError, match="a bug"):
        main(["bug"])
    assert capsys.readouterr().err == ""


def test_success_passes_the_exit_status_through():
    assert main(["fine"]) == 0


def test_user_errors_stay_value_errors_and_file_errors_for_library_callers():
    assert issubclass(UserError, ValueError)
    assert issubclass(InputNotFoundError, FileNotFoundError)


@entry_point
def write_to(argv=None) -> int:
    with open(argv[0], "w") as f:
        f.write("x")
    return 0


def test_the_system_refusing_a_named_path_is_a_user_error_naming_it(tmp_path, capsys):
    assert write_to([str(tmp_path / "missing" / "out.txt")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'missing' / 'out.txt'}: No such file or directory\n"
    assert write_to([str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path}: Is a directory\n"


@entry_point
def unnamed_os_error(argv=None) -> int:
    raise ConnectionResetError("peer reset")  # an OSError about no path of the user's: a bug or an outage


def test_an_os_error_about_no_path_keeps_its_traceback():
    with pytest.raises(ConnectionResetError):
        unnamed_os_error([])
