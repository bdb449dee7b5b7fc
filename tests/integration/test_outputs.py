"""What a cell returns, exactly: results, streams in the order they were produced (whatever
wrote them: Python, C, subprocesses, `!shell`), magics, rich display, errors without terminal
escapes, matplotlib figures (in place, at the end, never twice), large and unicode output."""

from __future__ import annotations

import base64
import json
import re
import struct

import pytest

from tests.conftest import outputs_of

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A 1x1 PNG.
TINY_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module")
def session(server):
    """One session for the tests whose cells leave no state the others could see."""
    return server.run("pass")["session_id"]


@pytest.fixture
def run(server, session):
    def run_cell(code: str) -> list[tuple[str, object]]:
        data = server.run(code, session)
        assert data["session_id"] == session
        assert data["status"] == "completed"
        for output in data["outputs"]:
            assert set(output) == {"type", "data"}
        return [(o["type"], o["data"]) for o in data["outputs"]]

    return run_cell


def fresh(server, code: str) -> list[tuple[str, object]]:
    """Run in a new session (for cells that change interpreter-wide state)."""
    data = server.run(code)
    return [(o["type"], o["data"]) for o in data["outputs"]]


def png_size(payload: object) -> tuple[int, int]:
    assert isinstance(payload, str)
    raw = base64.b64decode(payload, validate=True)
    assert raw[:8] == PNG_SIGNATURE
    return struct.unpack(">II", raw[16:24])


def strings_in(value: object):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings_in(item)


# -- results and streams ---------------------------------------------------------------------


def test_last_expression_is_execute_result(run):
    assert run("x = 20\nx * 2 + 2") == [("execute_result", {"text/plain": "42"})]


def test_trailing_semicolon_suppresses_result(run):
    assert run("x = 20\nx * 2 + 2;") == []


def test_none_result_shows_nothing(run):
    assert run("None") == []


def test_print_goes_to_stdout(run):
    assert run('print("hello")\nprint("world", end="!")') == [("stdout", "hello\nworld!")]


def test_stderr_goes_to_stderr(run):
    code = 'import sys\nsys.stderr.write("oops\\n")\nprint("again", file=sys.stderr)'
    assert run(code) == [("stderr", "oops\nagain\n")]


def test_order_kept_across_every_kind_of_writer(run):
    # Repeated so that a race between the stdout and stderr pipes shows up reliably.
    code = (
        "import os, subprocess, sys\n"
        "for i in range(50):\n"
        "    print(f'p{i}')\n"
        "    sys.stderr.write(f'e{i}\\n')\n"
        "    os.write(1, f'w{i}\\n'.encode())\n"
        "    os.system(f'echo s{i}')\n"
        "    subprocess.run(['echo', f'r{i}'])\n"
        "    sys.stderr.write(f'f{i}\\n')\n"
        "    !echo b{i}\n"
    )
    expected = [("stdout", "p0\n")]
    for i in range(50):
        expected += [
            ("stderr", f"e{i}\n"),
            ("stdout", f"w{i}\ns{i}\nr{i}\n"),
            ("stderr", f"f{i}\n"),
            ("stdout", f"b{i}\n" + (f"p{i + 1}\n" if i < 49 else "")),
        ]
    assert run(code) == expected


def test_order_kept_between_raw_fd_writes_and_sys_streams(run):
    code = (
        "import os, sys\n"
        "for i in range(1000):\n"
        "    sys.stderr.write(f'e{i}\\n')\n"
        "    os.write(1, f'w{i}\\n'.encode())\n"
        "    print(f'p{i}')\n"
        "    os.write(2, f'r{i}\\n'.encode())\n"
    )
    expected = []
    for i in range(1000):
        expected += [("stderr", f"e{i}\n"), ("stdout", f"w{i}\np{i}\n"), ("stderr", f"r{i}\n")]
    merged = []
    for kind, data in expected:  # consecutive stderr entries (r{i}, e{i+1}) merge
        if merged and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + data)
        else:
            merged.append((kind, data))
    assert run(code) == merged


def test_order_kept_between_shell_stdout_and_stderr(run):
    code = (
        "import sys\n"
        "print('a')\n"
        "!echo b >&2\n"
        "print('c')\n"
        "!echo d; echo e >&2\n"
        "print('f', file=sys.stderr)\n"
    )
    assert run(code) == [
        ("stdout", "a\n"), ("stderr", "b\n"), ("stdout", "c\nd\n"), ("stderr", "e\nf\n"),
    ]


def test_c_level_output_is_captured(run):
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None)\n"
        "print('py1')\n"
        "libc.printf(b'from C %d\\n', 42)\n"
        "libc.fflush(None)\n"
        "os.write(1, b'raw fd\\n')\n"
        "print('py2')\n"
    )
    assert run(code) == [("stdout", "py1\nfrom C 42\nraw fd\npy2\n")]
    assert run("import os\nos.write(2, b'raw err\\n');") == [("stderr", "raw err\n")]


def test_shell_expands_python_variables(run):
    code = 'name = "world"\n!echo hello $name {name.upper()}'
    assert run(code) == [("stdout", "hello world WORLD\n")]


def test_shell_output_captured_as_list(run):
    assert run("files = !printf 'a\\nb\\n'\nfiles.l") == [
        ("execute_result", {"text/plain": "['a', 'b']"}),
    ]


def test_pwd_magic(run):
    assert run("%pwd") == [("execute_result", {"text/plain": "'/workspace'"})]


def test_timeit_magic_prints(run):
    outputs = run("%timeit -n1 -r1 pass")
    assert len(outputs) == 1
    kind, text = outputs[0]
    assert kind == "stdout"
    assert re.fullmatch(
        r"[\d.]+ [nµm]?s ± [\d.]+ [nµm]?s per loop \(mean ± std\. dev\. of 1 run, 1 loop each\)\n",
        text,
    ), text


def test_cell_magic(run):
    assert run("%%bash\necho from bash\necho to err >&2") == [
        ("stdout", "from bash\n"), ("stderr", "to err\n"),
    ]


# -- rich display ----------------------------------------------------------------------------


def test_display_rich_objects(run):
    code = (
        "import base64\n"
        "from IPython.display import HTML, JSON, Image, Markdown, display\n"
        'display(HTML("<b>bold</b>"))\n'
        'display(Markdown("# Title"))\n'
        'display(JSON({"a": [1, 2], "b": {"c": None}}))\n'
        f'display(Image(data=base64.b64decode("{TINY_PNG}")))\n'
        'print("done")\n'
    )
    outputs = run(code)
    assert [kind for kind, _ in outputs] == ["display_data"] * 4 + ["stdout"]
    html, markdown, json_, image = (data for _, data in outputs[:4])
    assert html == {"text/html": "<b>bold</b>", "text/plain": "<IPython.core.display.HTML object>"}
    assert markdown == {
        "text/markdown": "# Title", "text/plain": "<IPython.core.display.Markdown object>",
    }
    assert json_["application/json"] == {"a": [1, 2], "b": {"c": None}}
    assert set(json_) == {"application/json", "text/plain"}
    assert set(image) == {"image/png", "text/plain"}
    assert image["image/png"] == TINY_PNG
    assert png_size(image["image/png"]) == (1, 1)
    assert outputs[4] == ("stdout", "done\n")


def test_object_with_rich_repr(run):
    code = (
        "class Card:\n"
        "    def _repr_html_(self):\n"
        "        return '<div>card</div>'\n"
        "    def __repr__(self):\n"
        "        return 'Card()'\n"
        "Card()\n"
    )
    assert run(code) == [
        ("execute_result", {"text/plain": "Card()", "text/html": "<div>card</div>"}),
    ]


def test_dataframe_result_has_html_and_text(run):
    outputs = run('import pandas as pd\npd.DataFrame({"a": [1, 2], "b": ["x", "y"]})')
    assert len(outputs) == 1
    kind, data = outputs[0]
    assert kind == "execute_result"
    assert set(data) == {"text/plain", "text/html"}
    assert data["text/plain"] == "   a  b\n0  1  x\n1  2  y"
    assert '<table border="1" class="dataframe">' in data["text/html"]
    assert "<td>x</td>" in data["text/html"]


# -- errors ----------------------------------------------------------------------------------


def test_exception_is_one_error_after_earlier_output(server, run, session):
    code = (
        "print('before')\n"
        "def divide(x):\n"
        "    return 1 / x\n"
        "divide(0)\n"
        "print('after')\n"
    )
    outputs = run(code)
    assert [kind for kind, _ in outputs] == ["stdout", "error"]
    assert outputs[0] == ("stdout", "before\n")
    text = outputs[1][1]
    assert isinstance(text, str)
    assert text.startswith("Traceback (most recent call last):")
    assert "divide(0)" in text
    assert "return 1 / x" in text
    assert text.rstrip().endswith("ZeroDivisionError: division by zero")
    # The session lives on and kept what ran.
    assert run("divide(4)") == [("execute_result", {"text/plain": "0.25"})]


def test_no_ansi_escapes_anywhere(server):
    code = (
        "import warnings\n"
        "print('plain')\n"
        "warnings.warn('careful')\n"
        "class Boom(Exception):\n"
        "    pass\n"
        "def deep(n):\n"
        "    if n == 0:\n"
        "        raise Boom('deep failure')\n"
        "    return deep(n - 1)\n"
        "try:\n"
        "    deep(3)\n"
        "except Boom as exc:\n"
        "    raise KeyError('chained') from exc\n"
    )
    response = server.execute(code)
    assert response.status_code == 200
    assert "\\u001b" not in response.text and "\x1b" not in response.text
    data = response.json()["data"]
    assert all("\x1b" not in s for s in strings_in(data))
    errors = outputs_of(data, "error")
    assert len(errors) == 1
    assert "Boom: deep failure" in errors[0]
    assert "The above exception was the direct cause of the following exception" in errors[0]
    assert errors[0].rstrip().endswith("KeyError: 'chained'")
    assert data["outputs"][0] == {"type": "stdout", "data": "plain\n"}


def test_syntax_error(run):
    outputs = run("print('never')\ndef broken(:\n    pass\n")
    assert len(outputs) == 1
    kind, text = outputs[0]
    assert kind == "error"
    assert "def broken(:" in text
    assert "SyntaxError: invalid syntax" in text
    assert "\x1b" not in text


def test_error_in_shell_command_is_not_an_exception(run):
    assert run("!ls /no/such/dir\nprint('next')") == [
        ("stderr", "ls: cannot access '/no/such/dir': No such file or directory\n"),
        ("stdout", "next\n"),
    ]


# -- matplotlib ------------------------------------------------------------------------------


def assert_figure(output, kind: str = "display_data") -> tuple[int, int]:
    assert output[0] == kind
    data = output[1]
    assert set(data) == {"image/png", "text/plain"}
    assert data["text/plain"].startswith("<Figure size")
    width, height = png_size(data["image/png"])
    assert width > 100 and height > 100
    return width, height


def test_show_returns_png_in_place(server):
    outputs = fresh(server, (
        "import matplotlib.pyplot as plt\n"
        "print('before')\n"
        "plt.plot([1, 2, 3])\n"
        "plt.show()\n"
        "print('after')\n"
    ))
    assert len(outputs) == 3
    assert outputs[0] == ("stdout", "before\n")
    assert_figure(outputs[1])
    assert outputs[2] == ("stdout", "after\n")


def test_agg_backend_show_still_returns_png(server):
    outputs = fresh(server, (
        "import matplotlib\n"
        "matplotlib.use('Agg')\n"
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3])\n"
        "plt.show()\n"
        "print('after')\n"
    ))
    assert not [o for o in outputs if o[0] == "stderr"], outputs
    assert len(outputs) == 2
    assert_figure(outputs[0])
    assert outputs[1] == ("stdout", "after\n")


def test_open_figure_returned_at_end_and_only_once(run):
    outputs = run(
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3])\n"
        "print('end')\n"
    )
    assert len(outputs) == 2
    assert outputs[0] == ("stdout", "end\n")
    assert_figure(outputs[1])
    assert run("print('next')") == [("stdout", "next\n")]
    assert run("plt.get_fignums()") == [("execute_result", {"text/plain": "[]"})]


def test_two_figures_two_images(run):
    outputs = run(
        "import matplotlib.pyplot as plt\n"
        "plt.figure(figsize=(4, 3))\n"
        "plt.plot([1, 2])\n"
        "plt.figure(figsize=(6, 3))\n"
        "plt.plot([2, 1]);\n"
    )
    assert len(outputs) == 2
    first, second = assert_figure(outputs[0]), assert_figure(outputs[1])
    assert first[0] < second[0]  # in creation order: the narrow one first
    assert outputs[0][1]["image/png"] != outputs[1][1]["image/png"]


def test_figure_as_last_expression_comes_once(run):
    outputs = run(
        "import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots()\n"
        "ax.plot([1, 2, 3])\n"
        "fig\n"
    )
    images = [o for o in outputs if "image/png" in o[1]]
    assert len(images) == 1, [kind for kind, _ in outputs]
    assert len(outputs) == 1
    assert_figure(outputs[0], "execute_result")


def test_figure_from_earlier_cell_as_last_expression(run):
    shown = run(
        "import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots()\n"
        "ax.plot([3, 2, 1])\n"
        "plt.show()\n"
    )
    assert len(shown) == 1
    assert_figure(shown[0])
    again = run("fig")
    assert len(again) == 1
    assert_figure(again[0], "execute_result")


# -- size and encoding -----------------------------------------------------------------------


def test_large_output_arrives_whole(run):
    outputs = run("print('\\n'.join(f'line {i:06d}' for i in range(20000)))")
    expected = "\n".join(f"line {i:06d}" for i in range(20000)) + "\n"
    assert len(expected) > 200_000
    assert outputs == [("stdout", expected)]


def test_unicode_output_intact(run):
    text = "héllo wörld — 漢字 😀 ∑ \u00ff"
    assert run(f"print({text!r})\n{text!r}") == [
        ("stdout", text + "\n"),
        ("execute_result", {"text/plain": repr(text)}),
    ]


def test_multibyte_characters_split_across_writes(run):
    code = (
        "import os, sys\n"
        "data = '漢😀é'.encode()\n"
        "for i in range(len(data)):\n"
        "    os.write(1, data[i:i + 1])\n"
        "sys.stdout.write('漢' * 40000)\n"
        "print()\n"
    )
    assert run(code) == [("stdout", "漢😀é" + "漢" * 40000 + "\n")]


def test_plotly_show_returns_the_figure_as_plotly_json(server):
    """fig.show() works (nbformat is in the runtime) and answers the figure itself, not
    plotly.js inlined into HTML (megabytes per first figure)."""
    data = server.run("import plotly.express as px\n"
                      "px.bar(x=['a', 'b'], y=[2, 5], title='bars').show()")
    assert outputs_of(data, "error") == []
    [bundle] = outputs_of(data, "display_data")
    figure = bundle["application/vnd.plotly.v1+json"]
    assert figure["data"][0]["type"] == "bar"
    assert figure["layout"]["title"]["text"] == "bars"
    assert len(json.dumps(data)) < 100_000


def test_a_json_output_holding_nan_is_dropped_with_a_notice(server, run):
    """NaN is not JSON: kept, it made the whole answer a 500 (streamed: invalid JSON)."""
    code = ("from IPython.display import JSON, display\n"
            "display(JSON({'x': float('nan')}))\nprint('after')")
    assert run(code) == [
        ("stderr", "\n[output dropped: display_data with a number JSON cannot hold "
                   "(NaN or infinity)]\n"),
        ("stdout", "after\n"),
    ]
    body = {"language": "python", "code": code, "stream": True}
    with server.client() as client, client.stream("POST", "/v1/tci/execute", json=body) as r:
        data = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1]["data"]["outputs"][0]["data"].startswith("\n[output dropped: display_data")
