"""The console's notebook page in real headless Chromium against a real server: sign in, run
cells that print and plot, see every kind of output, stop a long cell, move files in and out."""

from __future__ import annotations

import re
import time
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import open_new_session, run_in_cell, sign_in, start_cell
from tests.conftest import Server


def test_sign_in_then_run_a_cell_that_prints_and_plots(page: Page, server: Server) -> None:
    key = server.new_key("console-plot")
    sign_in(page, server, key)
    assert key not in page.url
    assert page.evaluate("sessionStorage.getItem('tci.key')") == key
    session_id = open_new_session(page)

    run_in_cell(page, 0, "import matplotlib.pyplot as plt\n"
                         "print('hello from the console')\n"
                         "plt.plot([1, 3, 2]); plt.title('three points'); plt.show()")

    first = page.locator(".notebook .cell").first
    expect(first.locator("pre.stdout")).to_have_text("hello from the console\n")
    image = first.locator("img.output-image")
    expect(image).to_be_visible()
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    assert image.evaluate("img => img.complete && img.naturalWidth") > 100  # a decoded PNG
    expect(first.locator(".prompt")).to_have_text("[1]")
    expect(page.locator(".execute-count")).to_have_text("1")
    # Shift+Enter moved on to a new, focused cell.
    expect(page.locator(".notebook .cell")).to_have_count(2)
    expect(page.locator(".notebook .cell").nth(1).locator("textarea")).to_be_focused()
    # The server agrees: the session ran once, for this key.
    with server.client(key) as client:
        sessions = client.get("/v1/tci/sessions").json()["data"]["sessions"]
    assert [(s["id"], s["execute_count"]) for s in sessions] == [(session_id, 1)]


def test_editor_highlights_and_indents_run_all_and_the_notebook_survives_a_reload(
    page: Page, server: Server
) -> None:
    sign_in(page, server, server.new_key("console-editor"))
    open_new_session(page)
    run_in_cell(page, 0, "def square(n):\n    return n * n  # comment\nanswer = square(7)")
    editor = page.locator(".notebook .cell").first.locator(".editor-view")
    expect(editor.locator(".tok-keyword", has_text="def")).to_be_visible()
    expect(editor.locator(".tok-def")).to_have_text("square")
    expect(editor.locator(".tok-comment")).to_have_text("# comment")
    expect(editor.locator(".tok-number")).to_have_text("7")

    # Enter after a colon indents the next line, as a Python editor should.
    second = page.locator(".notebook .cell").nth(1).locator("textarea")
    second.click()
    second.type("for i in range(2):\nprint(answer + i)")
    assert second.input_value() == "for i in range(2):\n    print(answer + i)"
    second.press("Control+Enter")  # runs in place
    expect(page.locator(".notebook .cell").nth(1).locator("pre.stdout")).to_have_text("49\n50\n")
    expect(page.locator(".notebook .cell")).to_have_count(2)

    # Run all: every cell again, in order (the first redefines what the second prints).
    cells = page.locator(".notebook .cell")
    cells.nth(0).locator("textarea").fill("answer = 100")
    page.click("#run-all")
    expect(cells.nth(1).locator("pre.stdout")).to_have_text("100\n101\n")
    expect(cells.nth(0).locator(".prompt")).to_have_text("[3]")
    expect(cells.nth(1).locator(".prompt")).to_have_text("[4]")

    # A reload brings the notebook back as it was (kept in the tab's session storage).
    page.reload()
    cells = page.locator(".notebook .cell")
    expect(cells).to_have_count(2)
    expect(cells.nth(0).locator("textarea")).to_have_value("answer = 100")
    expect(cells.nth(1).locator("textarea")).to_have_value(
        "for i in range(2):\n    print(answer + i)")
    expect(cells.nth(1).locator("pre.stdout")).to_have_text("100\n101\n")
    expect(cells.nth(1).locator(".prompt")).to_have_text("[4]")


def test_errors_tables_json_and_hostile_html_render_safely(page: Page, server: Server) -> None:
    sign_in(page, server, server.new_key("console-outputs"))
    open_new_session(page)
    cells = page.locator(".notebook .cell")

    run_in_cell(page, 0, "def inner():\n    return 1 / 0\ninner()")
    error = cells.nth(0).locator("pre.error")
    expect(error).to_contain_text("ZeroDivisionError")
    expect(error).to_contain_text("inner()")  # the traceback, not just the message
    expect(cells.nth(0).locator(".cell-status")).to_have_text(re.compile("^Failed in"))

    run_in_cell(page, 1, "import pandas as pd\npd.DataFrame({'city': ['Oslo', 'Lima'], "
                         "'temp': [4, 19]})")
    frame = cells.nth(1).locator("iframe.output-html")
    assert "allow-scripts" not in frame.get_attribute("sandbox")
    table = frame.content_frame.locator("table")
    expect(table).to_contain_text("Oslo")
    expect(table.locator("tbody tr")).to_have_count(2)

    run_in_cell(page, 2, "from IPython.display import JSON\nJSON({'model': 'tci', 'n': [1, 2]})")
    expect(cells.nth(2).locator("details.json")).to_contain_text('"model": "tci"')

    # HTML from user code cannot run script in the console (which holds the key).
    run_in_cell(page, 3, "from IPython.display import HTML\nHTML(\"<b id='bold'>bold</b>"
                         "<img src=x onerror=\\\"parent.document.title='pwned'\\\">"
                         "<script>parent.document.title='pwned'</script>\")")
    expect(cells.nth(3).locator("iframe").content_frame.locator("#bold")).to_have_text("bold")
    page.wait_for_timeout(300)
    assert page.title() == "tci console"

    run_in_cell(page, 4, "import sys\nprint('to stderr', file=sys.stderr)")
    expect(cells.nth(4).locator("pre.stderr")).to_have_text("to stderr\n")

    # Markdown is rendered from DOM nodes: structure yes, markup from the text no.
    markdown = ("# Results\n\nAccuracy is **0.93** with `k=5`, see [docs](http://127.0.0.1:9/docs)"
                " or [this](javascript:alert(1)).\n\n- first\n- second\n\n"
                "```\nx = 1\n```\n\n<img src=x onerror=alert(1)>")
    run_in_cell(page, 5, f"from IPython.display import Markdown\nMarkdown({markdown!r})")
    rendered = cells.nth(5).locator(".markdown")
    expect(rendered.locator("h1")).to_have_text("Results")
    expect(rendered.locator("strong")).to_have_text("0.93")
    expect(rendered.locator("p code")).to_have_text("k=5")
    expect(rendered.locator("li")).to_have_text(["first", "second"])
    expect(rendered.locator("pre code")).to_have_text("x = 1")
    expect(rendered.locator("a")).to_have_count(1)  # the javascript: link stays text
    expect(rendered.locator("a")).to_have_attribute("href", "http://127.0.0.1:9/docs")
    expect(rendered.locator("img")).to_have_count(0)
    expect(rendered).to_contain_text("<img src=x onerror=alert(1)>")


def test_output_streams_in_and_stop_interrupts_a_long_cell(page: Page, server: Server) -> None:
    sign_in(page, server, server.new_key("console-stop"))
    open_new_session(page)
    run_in_cell(page, 0, "kept = 41")
    start_cell(page, 1, "import time\nprint('started', flush=True)\ntime.sleep(120)\n"
                        "print('never')")
    long_cell = page.locator(".notebook .cell").nth(1)
    # The first line shows while the cell is still running: output streams in.
    expect(long_cell.locator("pre.stdout")).to_have_text("started\n")
    expect(long_cell).to_have_class(re.compile(r"\brunning\b"))
    expect(long_cell.locator(".prompt")).to_have_text("[*]")

    began = time.monotonic()
    long_cell.locator("button.stop").click()
    expect(long_cell.locator(".cell-status")).to_have_text(re.compile("^Failed in"))
    assert time.monotonic() - began < 30
    expect(long_cell.locator("pre.error")).to_contain_text("KeyboardInterrupt")
    # It points at the user's line, with none of the worker's own frames.
    expect(long_cell.locator("pre.error")).to_contain_text("time.sleep(120)")
    expect(long_cell.locator("pre.error")).not_to_contain_text("tci_worker")
    expect(long_cell.locator("pre.stdout")).to_have_text("started\n")
    expect(long_cell.locator("button.stop")).to_be_hidden()

    # The session lived through the interrupt, its variables intact.
    run_in_cell(page, 2, "print(kept + 1)")
    expect(page.locator(".notebook .cell").nth(2).locator("pre.stdout")).to_have_text("42\n")


def test_upload_by_drag_and_drop_and_download_what_the_code_wrote(
    page: Page, server: Server, tmp_path: Path
) -> None:
    sign_in(page, server, server.new_key("console-files"))
    open_new_session(page)
    files = page.locator("#files")
    expect(files.locator(".state.empty")).to_be_visible()

    # A file dropped on the drop zone, as a user drags it from their desktop.
    drop = page.evaluate_handle("""([name, text]) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([text], name, {type: "text/csv"}));
        return transfer;
    }""", ["scores.csv", "name,score\nada,3\ngrace,4\n"])
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": drop})
    expect(files.locator("li[data-path='scores.csv']")).to_be_visible()
    expect(files.locator(".files-status")).to_have_text("Uploaded 1 file.")

    # And one through the file picker, binary this time.
    picked = tmp_path / "blob.bin"
    picked.write_bytes(bytes(range(256)))
    page.set_input_files("#file-picker", str(picked))
    expect(files.locator("li[data-path='blob.bin']")).to_contain_text("256 B")

    run_in_cell(page, 0, "import pandas as pd\nframe = pd.read_csv('scores.csv')\n"
                         "print(frame.score.sum(), len(open('blob.bin', 'rb').read()))\n"
                         "frame.assign(double=frame.score * 2).to_csv('out/doubled.csv', "
                         "index=False) if __import__('os').makedirs('out', exist_ok=True) "
                         "is None else None")
    expect(page.locator(".notebook .cell").first.locator("pre.stdout")).to_have_text("7 256\n")
    written = files.locator("li[data-path='out/doubled.csv']")
    expect(written).to_be_visible()  # the list refreshes after each cell

    with page.expect_download() as download_info:
        written.locator("button", has_text="Download").click()
    download = download_info.value
    assert download.suggested_filename == "doubled.csv"
    saved = tmp_path / "downloaded.csv"
    download.save_as(saved)
    assert saved.read_text() == "name,score,double\nada,3,6\ngrace,4,8\n"

    with page.expect_download() as download_info:
        files.locator("li[data-path='blob.bin'] button").click()
    download_info.value.save_as(tmp_path / "blob-back.bin")
    assert (tmp_path / "blob-back.bin").read_bytes() == bytes(range(256))


def test_svg_and_jpeg_images_render(page: Page, server: Server) -> None:
    sign_in(page, server, server.new_key("console-images"))
    open_new_session(page)
    svg = "<svg xmlns='http://www.w3.org/2000/svg' width='40' height='30'><rect width='40' " \
          "height='30' fill='red'/></svg>"
    run_in_cell(page, 0, f"from IPython.display import SVG\nSVG(\"{svg}\")")
    image = page.locator(".notebook .cell").first.locator("img.output-image")
    expect(image).to_have_attribute("src", re.compile("^data:image/svg"))
    assert image.evaluate("img => img.complete && img.naturalWidth") == 40
    # A JPEG made in the session, displayed as a raw MIME bundle.
    run_in_cell(page, 1, "import base64, io\nfrom PIL import Image\n"
                         "from IPython.display import display\nbuf = io.BytesIO()\n"
                         "Image.new('RGB', (3, 2), 'red').save(buf, 'JPEG')\n"
                         "display({'image/jpeg': base64.b64encode(buf.getvalue()).decode(), "
                         "'text/plain': 'red'}, raw=True)")
    red = page.locator(".notebook .cell").nth(1).locator("img.output-image")
    expect(red).to_have_attribute("src", re.compile("^data:image/jpeg;base64,"))
    expect(red).to_have_attribute("alt", "red")
    assert red.evaluate("img => img.complete && img.naturalWidth") == 3


def test_plotly_figures_are_drawn_interactively_and_cannot_inject_script(
    page: Page, server: Server
) -> None:
    sign_in(page, server, server.new_key("console-plotly"))
    open_new_session(page)
    hostile = "</script><script>parent.document.title='pwned'</script>"
    run_in_cell(page, 0, "import plotly.express as px\n"
                         f"fig = px.scatter(x=[1, 2, 3], y=[3, 1, 2], title=\"{hostile}\")\n"
                         "fig.show()")
    frame = page.locator("iframe.output-plotly")
    # plotly.js (served from the runtime's plotly package) ran in a frame with no way out.
    assert frame.get_attribute("sandbox") == "allow-scripts"
    plot = frame.content_frame
    expect(plot.locator(".scatterlayer .point")).to_have_count(3)
    expect(plot.locator(".gtitle")).to_have_text(hostile)
    assert page.title() == "tci console"
