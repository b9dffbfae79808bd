"""How errors render: location, the source line, and a caret under the span."""
from axon.ir import AxonError, Span
from axon.ir.errors import SHOWN_LINE


def test_error_renders_location_line_and_caret():
    err = AxonError("unknown name 'lineer'", Span("m.axon", 3, 14, 3, 20, "    h = relu(lineer(x, 128))"),
                    hint="did you mean 'linear'?")
    assert str(err).splitlines() == [
        "m.axon:3:14: error: unknown name 'lineer'",
        "        h = relu(lineer(x, 128))",
        "                 ^^^^^^",
        "hint: did you mean 'linear'?",
    ]


def test_a_long_line_shows_a_window_around_the_caret():
    line = "x" * 5000 + " bad " + "y" * 5000
    shown, caret = Span("f", 1, 5002, 1, 5005, line).caret().splitlines()
    assert len(shown) < SHOWN_LINE + 12 and shown.strip().startswith("...") and shown.endswith("...")
    assert shown[caret.index("^"):caret.index("^") + 3] == "bad" and caret.count("^") == 3


def test_caret_at_the_end_of_a_long_line_and_on_a_crlf_line():
    line = "z" * 400 + "!"
    shown, caret = Span("f", 1, 401, None, None, line).caret().splitlines()
    assert shown[caret.index("^")] == "!" and not shown.endswith("...")
    shown, caret = Span("f", 1, 3, 1, 4, "ab!cd\r\n").caret().splitlines()
    assert shown == "    ab!cd" and caret == "      ^"
