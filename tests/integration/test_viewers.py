""""Open a viewer" calls return their image or page inline, shaped like `plt.show()`'s figure:
Pillow's `Image.show()`, OpenCV's `cv2.imshow()`, `webbrowser.open()` of a local file (which
is how Bokeh's `show()` opens its plot). Nothing is imported before the user's code asks."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

RED = (255, 0, 0)


def run(server, code: str) -> list[tuple[str, object]]:
    """Each cell in a fresh session: what the worker imported before is part of the test."""
    data = server.run(code)
    assert data["status"] == "completed"
    return [(o["type"], o["data"]) for o in data["outputs"]]


def decoded(bundle: object) -> Image.Image:
    assert isinstance(bundle, dict)
    assert set(bundle) == {"image/png", "text/plain"}  # as plt.show() returns a figure
    raw = base64.b64decode(bundle["image/png"], validate=True)
    image = Image.open(io.BytesIO(raw))
    assert image.format == "PNG"
    image.load()
    return image


def test_image_show_returns_one_png(server):
    outputs = run(server, 'from PIL import Image\nImage.new("RGB", (8, 8), "red").show()')
    assert [kind for kind, _ in outputs] == ["display_data"]  # no stderr, no second copy
    image = decoded(outputs[0][1])
    assert image.size == (8, 8)
    assert set(image.convert("RGB").getdata()) == {RED}
    assert outputs[0][1]["text/plain"] == "<PIL.Image.Image image mode=RGB size=8x8>"


def test_image_show_keeps_its_place_among_prints(server):
    outputs = run(server, "from PIL import Image\nprint('before')\n"
                          "Image.new('RGB', (8, 8), 'red').show()\nprint('after')")
    assert [kind for kind, _ in outputs] == ["stdout", "display_data", "stdout"]
    assert outputs[0][1] == "before\n"
    assert outputs[2][1] == "after\n"
    assert decoded(outputs[1][1]).size == (8, 8)


def test_image_show_of_other_modes_and_a_title(server):
    code = (
        "from PIL import Image\n"
        "red = Image.new('RGB', (8, 8), 'red')\n"
        "red.convert('P').show(title='palette')\n"
        "Image.new('RGBA', (8, 8), (255, 0, 0, 128)).show(title='half transparent')\n"
        "Image.new('1', (8, 8), 1).show('bilevel')\n"
        "Image.new('CMYK', (8, 8), (0, 255, 255, 0)).show()\n"  # no PNG mode: converted
    )
    outputs = run(server, code)
    assert [kind for kind, _ in outputs] == ["display_data"] * 4
    palette, rgba, bilevel, cmyk = (decoded(data) for _, data in outputs)
    assert palette.mode == "P" and set(palette.convert("RGB").getdata()) == {RED}
    assert rgba.mode == "RGBA" and set(rgba.getdata()) == {(255, 0, 0, 128)}
    assert bilevel.mode == "1" and set(bilevel.convert("L").getdata()) == {255}
    assert cmyk.mode == "RGB" and set(cmyk.getdata()) == {RED}


def test_imageshow_show_and_a_registered_viewer_of_the_user(server):
    """`ImageShow.show()` answers True (a viewer was found); a viewer the user registers
    first still wins, as Pillow documents."""
    code = (
        "from PIL import Image, ImageShow\n"
        "print(ImageShow.show(Image.new('L', (8, 8), 255)))\n"
        "class Mine(ImageShow.Viewer):\n"
        "    def show(self, image, **options):\n"
        "        print('mine', image.size)\n"
        "        return 1\n"
        "ImageShow.register(Mine, order=-1)\n"
        "Image.new('L', (8, 8)).show()\n"
    )
    outputs = run(server, code)
    assert [kind for kind, _ in outputs] == ["display_data", "stdout"]
    assert decoded(outputs[0][1]).size == (8, 8)
    assert outputs[1][1] == "True\nmine (8, 8)\n"


def test_viewers_are_installed_without_importing_their_packages(server):
    modules = ("PIL.ImageShow", "webbrowser", "cv2")
    outputs = run(server, f"import sys\nprint([m for m in {modules!r} if m in sys.modules])")
    assert outputs == [("stdout", "[]\n")]


def test_cv2_imshow_and_its_desktop_idiom(server):
    code = (
        "import cv2, numpy as np\n"
        "bgr = np.zeros((4, 6, 3), np.uint8)\n"
        "bgr[..., 2] = 255\n"  # red, in OpenCV's BGR order
        "cv2.namedWindow('frame')\n"
        "cv2.imshow('frame', bgr)\n"
        "print(cv2.waitKey(0), cv2.pollKey())\n"
        "cv2.destroyAllWindows()\n"
    )
    outputs = run(server, code)
    assert [kind for kind, _ in outputs] == ["display_data", "stdout"]
    image = decoded(outputs[0][1])
    assert image.size == (6, 4)
    assert set(image.convert("RGB").getdata()) == {RED}
    assert outputs[1][1] == "-1 -1\n"


def test_webbrowser_open_of_a_local_file_shows_it(server):
    code = (
        "import webbrowser, pathlib\n"
        "pathlib.Path('page.html').write_text('<b>hello</b>')\n"
        "relative = webbrowser.open('page.html')\n"
        "as_uri = webbrowser.open_new_tab(pathlib.Path('page.html').resolve().as_uri())\n"
        # Not a local file: left to the browsers Python knows, here one the user registered.
        "class Mine(webbrowser.BaseBrowser):\n"
        "    def open(self, url, new=0, autoraise=True):\n"
        "        print('mine', url)\n"
        "        return True\n"
        "webbrowser.register('mine', None, Mine('mine'), preferred=True)\n"
        "print(relative, as_uri, webbrowser.open('http://127.0.0.1:9/'))\n"
    )
    outputs = run(server, code)
    assert [kind for kind, _ in outputs] == ["display_data", "display_data", "stdout"]
    assert outputs[0][1] == {"text/html": "<b>hello</b>", "text/plain": "page.html"}
    assert outputs[1][1] == {"text/html": "<b>hello</b>", "text/plain": "/workspace/page.html"}
    assert outputs[2][1] == "mine http://127.0.0.1:9/\nTrue True True\n"


@pytest.mark.parametrize("kind", ["png", "svg"])
def test_webbrowser_open_of_a_local_image(server, kind):
    write = {
        "png": "from PIL import Image\nImage.new('RGB', (8, 8), 'red').save('red.png')",
        "svg": "open('red.svg', 'w').write('<svg xmlns=\"http://www.w3.org/2000/svg\"/>')",
    }[kind]
    outputs = run(server, f"{write}\nimport webbrowser\nwebbrowser.open('red.{kind}');")
    assert [k for k, _ in outputs] == ["display_data"]
    if kind == "png":
        assert set(decoded(outputs[0][1]).getdata()) == {RED}
    else:
        assert outputs[0][1]["image/svg+xml"].startswith("<svg")


def test_bokeh_show_returns_its_page(server):
    code = (
        "from bokeh.plotting import figure, show\n"
        "plot = figure(width=200, height=200)\n"
        "plot.line([1, 2, 3], [1, 4, 9])\n"
        "show(plot)\n"
    )
    outputs = run(server, code)
    assert [kind for kind, _ in outputs] == ["display_data"]
    html = outputs[0][1]["text/html"]
    assert "Bokeh" in html and "<html" in html
