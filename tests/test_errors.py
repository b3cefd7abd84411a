"""studio.core.errors: the one-line messages the UI, the worker and the CLI show."""

import subprocess
import sys

import pytest

from studio.core.errors import (
    OUT_OF_MEMORY,
    EngineError,
    ModelError,
    RequestError,
    describe_error,
    first_line,
    is_out_of_memory,
)


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError / torch.OutOfMemoryError (matched by name)."""


def test_first_line_of_a_multi_line_message_is_line_one():
    assert first_line(RuntimeError("first\nsecond\nthird")) == "first"


def test_first_line_skips_blank_lines_and_strips():
    assert first_line(ValueError("\n   \n  real line  \nmore")) == "real line"


def test_first_line_of_an_empty_exception_is_its_type_name():
    assert first_line(ValueError()) == "ValueError"
    assert first_line(RequestError("  \n ")) == "RequestError"


def test_first_line_of_a_string():
    assert first_line("  one\ntwo") == "one"
    assert first_line("") == ""


def test_describe_engine_error_is_its_first_line():
    assert describe_error(ModelError("No model in /x\nlooked for unet/")) == "No model in /x"


def test_describe_empty_engine_error_is_its_type_name():
    assert describe_error(RequestError()) == "RequestError"
    assert describe_error(EngineError("")) == "EngineError"


def test_describe_memory_error_is_the_out_of_memory_message():
    assert describe_error(MemoryError("cannot allocate 4 GiB")) == OUT_OF_MEMORY
    assert describe_error(MemoryError()) == OUT_OF_MEMORY


def test_describe_torch_out_of_memory_by_class_name():
    exc = OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\n(GPU 0; 8 GiB total)")
    assert is_out_of_memory(exc)
    assert describe_error(exc) == OUT_OF_MEMORY


def test_describe_unexpected_error_names_the_type_and_line_one():
    assert describe_error(RuntimeError("boom\ntraceback-ish detail")) == "Unexpected error (RuntimeError): boom"


def test_describe_unexpected_error_without_text():
    assert describe_error(KeyError()) == "Unexpected error (KeyError): no details"
    assert describe_error(ValueError("  \n ")) == "Unexpected error (ValueError): no details"


@pytest.mark.parametrize(
    "exc",
    [
        EngineError("a\nb"),
        RuntimeError("a\r\nb"),
        MemoryError("x\ny"),
        OutOfMemoryError("x\ny"),
        OSError(2, "No such file\nor directory"),
        Exception(),
    ],
)
def test_describe_is_always_one_non_empty_line(exc):
    text = describe_error(exc)
    assert text
    assert "\n" not in text and "\r" not in text


def test_out_of_memory_message_text():
    assert OUT_OF_MEMORY == "Out of memory: try a smaller size or batch"


def test_errors_module_imports_neither_torch_nor_qt():
    code = (
        "import sys, studio.core.errors; "
        "bad = [m for m in ('torch', 'PySide6', 'diffusers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
